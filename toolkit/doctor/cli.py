"""``toolkit doctor --config ...``: build the configured model and data, run the recipe's checks, report.

Regularisation is switched off for the checks (dropout, stochastic depth, label smoothing, augmentation, mixup) as
the recipe asks; every other setting is the config's. Any ``--key value`` after the doctor's own options is a
``toolkit fit`` override (``toolkit doctor --config c.yaml --model.head_init zeros``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonargparse import ArgumentParser

from toolkit.cli_options import SPELLING, CompactHelp, parse, snake
from toolkit.errors import ToolkitError
from toolkit.lightning_cli.parsed_checks import check_root_dir

if TYPE_CHECKING:  # imported where used: `toolkit doctor --help` loads neither torch nor Lightning
    import lightning.pytorch as pl

    from toolkit.doctor import checks

#: what "regularisation off" means for the classifier and the data
REGULARISATION_OFF = [
    "--model.drop_rate=0",
    "--model.drop_path_rate=0",
    "--model.label_smoothing=0",
    "--data.augment=none",
    "--data.mixup_alpha=0",
    "--data.cutmix_alpha=0",
]


@dataclass
class DoctorOptions:
    """How much the doctor runs (defaults: well under a minute for test_resnet on digits on 2 CPU cores)."""

    out: Path = Path("runs/doctor")
    sample_batches: int = 5
    overfit_steps: int = 100
    check_steps: int = 30
    lr_find_steps: int = 40


@dataclass
class Diagnosis:
    """The doctor's verdicts and measurements (``steps`` in recipe order)."""

    steps: list[checks.Step]
    curves: list[checks.Curve]
    lr_find: float | None
    lr: float | None

    @property
    def passed(self) -> bool:
        return all(step.passed for step in self.steps)


def build(configs: list[str], overrides: list[str]) -> tuple[pl.LightningModule, pl.LightningDataModule, str]:
    """The model and data module of ``toolkit fit --config ...`` with regularisation off, seeded as the config says.

    Also returns the configured accelerator (the checks train on one device of it).
    """
    from toolkit.lightning_cli import ToolkitCLI

    class _BuildOnly(ToolkitCLI):
        def before_instantiate_classes(self) -> None:
            pass  # no checkpoint folder or W&B run: the doctor trains throw-away copies

    args = [f"--config={c}" for c in configs]
    args += [*REGULARISATION_OFF, *overrides, "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    with warnings.catch_warnings():  # LightningCLI warns when given args while sys.argv holds the doctor's
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        cli = _BuildOnly(args=args, run=False)
    accelerator = cli.config.trainer.accelerator
    return cli.model, cli.datamodule, accelerator if isinstance(accelerator, str) else "auto"


def diagnose(
    model: pl.LightningModule, datamodule: pl.LightningDataModule, options: DoctorOptions, accelerator: str = "cpu"
) -> Diagnosis:
    """Run steps 1-3 (and record step 6's curves) on copies of ``model``; ``model`` itself is left untrained.

    Before it starts it says its step budget; after its first steps and each phase, the time left (:mod:`.budget`).
    """
    from torch.utils.data import DataLoader

    from toolkit.doctor import checks
    from toolkit.doctor.budget import Budget, StepClock

    datamodule.setup("fit")
    batch = datamodule.batch_size
    ordered = DataLoader(datamodule.splits.train, batch_size=batch, shuffle=False)  # the same batches every time
    train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
    unfreeze = model.hparams.get("unfreeze_at_epoch") if model.hparams.get("freeze_backbone") else None
    check_steps = checks.steps_before_unfreeze(options.check_steps, unfreeze, len(train))
    budget = Budget(
        options.overfit_steps,
        options.lr_find_steps,
        check_steps,
        len(checks.CANDIDATE_LRS),
        len(val),
        batch,
        val.batch_size or batch,
    )
    print(budget.line(), flush=True)
    clock = StepClock(budget, say=lambda line: print(line, flush=True))
    steps = [checks.initial_loss(model, ordered, datamodule.num_classes)]
    sample = checks.small_sample(ordered, options.sample_batches)
    clock.start("step 2 (overfit)", options.overfit_steps)
    overfit_step, overfit_curve = checks.overfit(model, sample, options.overfit_steps, accelerator, [clock])
    clock.end()
    steps.append(overfit_step)
    clock.start("the lr range test", options.lr_find_steps)
    lr_find = checks.lr_range_test(model, datamodule, options.lr_find_steps, accelerator, [clock])
    clock.end()
    clock.start("step 3 (lr checks)", budget.lrs * check_steps)
    curves = checks.check_lrs(model, train, val, check_steps, accelerator=accelerator, callbacks=[clock])
    clock.end()
    lr_step, lr = checks.choose_lr(curves)
    if check_steps < options.check_steps:
        lr_step.measured += f" (over {check_steps} steps: the probe phase, before the unfreeze at epoch {unfreeze})"
    if lr_find is not None:
        lr_step.measured += f"; lr_find suggests {lr_find:.2g}"
    steps.append(lr_step)
    steps.append(_ratio_step(curves, lr, zero_head=model.hparams.get("head_init") == "zeros"))
    return Diagnosis(steps, [overfit_curve, *curves], lr_find, lr)


def _ratio_step(curves: list[checks.Curve], lr: float | None, zero_head: bool = False) -> checks.Step:
    """Step 6 (read the curves): the chosen lr's update/parameter ratios against ~1e-3, and its train/val gap.

    A zero-initialised head starts with parameters of norm 0: its update/parameter ratio is huge by construction over
    a short check, not a sign of a wrong lr, so it gets no advice.
    """
    from toolkit.doctor import checks

    chosen = next((c for c in curves if lr is not None and c.name == f"lr={lr:g}"), None)
    if chosen is None:
        return checks.Step("6 curves", False, "no lr to read", "fix steps 1-3 first")
    ratios = ", ".join(f"{g} {r:.1e}" for g, r in chosen.ratios.items())
    off = [g for g, r in chosen.ratios.items() if not 1e-4 <= r <= 1e-2 and not (zero_head and g == "head")]
    text = f"update/param at lr {lr:g}: {ratios}"
    if chosen.val_acc is not None and chosen.acc:
        tail = chosen.acc[-5:]
        text += f"; train acc {sum(tail) / len(tail):.2f}, val acc {chosen.val_acc:.2f}"
    if off:
        advice = f"update/param of {', '.join(off)} is far from the rule of thumb ~1e-3: consider scaling its lr"
        return checks.Step("6 curves", True, text, advice, {"ratios": chosen.ratios}, warn=True)
    return checks.Step("6 curves", True, text, values={"ratios": chosen.ratios})


#: the ``toolkit fit`` options the doctor passes on to the model and data it builds
FIT_PREFIXES = ("--model.", "--data.", "--trainer.", "--seed_everything", "--seed-everything")


def split_fit_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` as (the doctor's own options, ``toolkit fit`` overrides in its snake_case spelling).

    A fit override is an option under ``--model.``/``--data.``/``--trainer.`` (or ``--seed_everything``) with the
    words after it up to the next option; anything else is the doctor's, and an unknown one is refused by its parser
    instead of being passed on.
    """
    own: list[str] = []
    fit: list[str] = []
    target = own
    for arg in argv:
        if arg.startswith("--"):
            target = fit if arg.startswith(FIT_PREFIXES) else own
        target.append(arg)
    return own, snake(fit)


def build_parser() -> ArgumentParser:
    """The doctor's own options (``toolkit fit`` overrides are split off first: :func:`split_fit_overrides`)."""
    parser = ArgumentParser(
        prog="toolkit doctor",
        usage="toolkit doctor --config FILE [options] [--<fit option> VALUE ...]",
        description="Check a config with the tuning recipe: initial loss, overfit, lr range (README).",
        formatter_class=CompactHelp,
    )
    parser.epilog = f"""--model.*, --data.*, --trainer.*: toolkit fit overrides (toolkit fit --help)
{SPELLING}

examples:
  toolkit doctor --config configs/quickstart.yaml
  toolkit doctor --config configs/digits.yaml --model.head_init zeros
"""
    parser.add_argument("--config", type=str, action="append", required=True, help="config file(s), as for fit")
    parser.add_argument("--out", type=str, default="runs/doctor", help="doctor.json, ranges.yaml, curves (runs/doctor)")
    parser.add_argument("--sample-batches", type=int, default=5, help="step 2: batches in the small sample (5)")
    parser.add_argument("--overfit-steps", type=int, default=100, help="step 2: most steps to reach 100 % (100)")
    parser.add_argument("--check-steps", type=int, default=30, help="step 3: steps per candidate lr (30)")
    parser.add_argument("--lr-find-steps", type=int, default=40, help="step 3: steps of the lr range test (40)")
    return parser


def parse_args(argv: list[str]) -> tuple[Any, list[str]]:
    """The doctor's own options, and the rest as ``toolkit fit`` overrides."""
    own, rest = split_fit_overrides(argv)
    args = parse(build_parser(), own, "doctor")
    for name in ("sample_batches", "overfit_steps", "check_steps", "lr_find_steps"):
        if getattr(args, name) < 1 or (name == "lr_find_steps" and args.lr_find_steps < 12):
            raise ToolkitError(
                f"--{name.replace('_', '-')} {getattr(args, name)}: too small (steps >= 1, lr-find >= 12)"
            )
    return args, rest


def main(argv: list[str]) -> int:
    """Run ``toolkit doctor``; 0 when steps 1-3 pass, 1 otherwise."""
    args, overrides = parse_args(argv)
    check_root_dir(args.out, "--out")
    for config in args.config:
        if not Path(config).is_file():
            raise ToolkitError(f"config '{config}' not found; pass a YAML file such as configs/digits.yaml")
    options = DoctorOptions(
        Path(args.out), args.sample_batches, args.overfit_steps, args.check_steps, args.lr_find_steps
    )
    from rich.console import Console

    from toolkit.doctor.report import render, write_outputs

    model, datamodule, accelerator = build(args.config, overrides)
    result = diagnose(model, datamodule, options, accelerator)
    console = Console()
    if not console.is_terminal:
        console.width = 150  # a log or a pipe: one row per step rather than a narrow column
    render(result.steps, result.curves[1:], result.lr_find, console)
    written = write_outputs(options.out, result.steps, result.curves, result.lr_find, result.lr)
    console.print(f"curves, doctor.json{' and ranges.yaml' if 'ranges' in written else ''} in {options.out}")
    if "ranges" in written and not math.isnan(result.lr or math.nan):
        console.print(f"next: put `ranges: {written['ranges']}` in a search spec and run `toolkit search SPEC`")
    return 0 if all(step.passed for step in result.steps[:3]) else 1
