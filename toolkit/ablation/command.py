"""Turn a run into the ``toolkit fit`` command a user could type, and check every variant's command before any runs.

The check (`check_variants`) parses each variant with the LightningCLI parser, compares the resolved configs, and
builds each distinct model once, so a spec is checked as a whole before the first run starts.

Override values are written the way jsonargparse reads them from a command line: it parses a value according to
the argument's type, so strings go through verbatim (quoting ``'off'`` would make the quotes part of the string)
and everything else (numbers, booleans, null, lists, mappings) is written as JSON, which YAML reads back exactly.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.study.spec import AblationSpec, Run

#: the program every run starts: the ``toolkit`` entry point of this interpreter
DEFAULT_LAUNCHER = [sys.executable, "-m", "toolkit"]


def format_value(value: Any) -> str:
    """Write one override value for the command line (see the module docstring)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def last_checkpoint(run_dir: Path) -> Path | None:
    """``<run dir>/checkpoints/last.ckpt`` when it exists: the run then resumes with ``--ckpt_path last``."""
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def resume_args(
    spec: AblationSpec, run: Run, root: str | Path, gpus: int = 0, ddp: tuple[int, int] | None = None
) -> list[str]:
    """The run's ``toolkit fit`` arguments, resuming from ``checkpoints/last.ckpt`` when the run has one."""
    return fit_args(spec, run, root, resume=last_checkpoint(run.directory(root)) is not None, gpus=gpus, ddp=ddp)


def fit_args(
    spec: AblationSpec,
    run: Run,
    root: str | Path,
    *,
    resume: bool = False,
    gpus: int = 0,
    ddp: tuple[int, int] | None = None,
) -> list[str]:
    """The arguments after ``toolkit`` that train, test and log one run.

    Args:
        spec: the ablation.
        run: one of ``spec.runs()``.
        root: the folder holding every ablation's runs.
        resume: add ``--ckpt_path last`` (the run dir holds ``checkpoints/last.ckpt``); ``toolkit fit`` then
            continues the W&B run stored in the checkpoint (online) or starts one with ``resumed_from`` (offline).
        gpus: GPUs given to the run; more than one trains with DDP inside the run.
        ddp: (nodes, processes per node) when the run is one process per Slurm task, each a DDP rank that
            Lightning's ``SLURMEnvironment`` places (on GPUs, one per process; on CPUs, gloo).
    """
    args = ["fit"]
    for base in spec.base:
        args += ["--config", base]
    for key, value in run.overrides.items():
        args += [f"--{key}", format_value(value)]
    args += [
        "--seed_everything",
        str(run.seed),
        "--trainer.default_root_dir",
        str(run.directory(root)),
        "--test_after_fit",
        "true",
        "--ablation.name",
        spec.name,
        "--ablation.variant",
        run.variant,
        "--ablation.seed",
        str(run.seed),
        "--trainer.logger.init_args.project",
        spec.project,
    ]
    if ddp is not None:
        nodes, processes = ddp
        args += ["--trainer.accelerator", "gpu" if gpus else "cpu", "--trainer.devices", str(processes)]
        args += ["--trainer.num_nodes", str(nodes), "--trainer.strategy", "ddp"]
    elif gpus:
        args += ["--trainer.accelerator", "gpu", "--trainer.devices", str(gpus)]
        if gpus > 1:
            args += ["--trainer.strategy", "ddp"]
    if resume:
        args += ["--ckpt_path", "last"]
    return args


def shell_command(launcher: list[str], args: list[str]) -> str:
    """The command as one shell line (for logs and the ledger)."""
    return shlex.join([*launcher, *args])


def check_variants(spec: AblationSpec, root: str | Path, gpus: int = 0) -> dict[str, dict[str, Any]]:
    """Check the spec as a whole before any run starts; instantiates no trainer and no data, starts nothing.

    1. Every variant parses with the ``toolkit fit`` parser (one seed: the seed does not change what parses).
    2. No variant resolves to the same config as the baseline or another variant (it would measure nothing).
    3. Every distinct model is built once on the CPU, with its switches, zero-init guard and liveness probe, so a
       contradictory variant (fused BN on a ViT, a dead network, out-of-range blocks...) fails here, not per run.

    Imports torch and Lightning (through ``toolkit.lightning_cli``).

    Returns:
        per variant, what the study's cost estimate needs (`toolkit.ablation.estimate`): the model's parameter
        counts, the size of one checkpoint estimated from them, how many checkpoints a run keeps, its epoch cap.

    Raises:
        ToolkitError: naming the variant (or both variants) and the reason.
    """
    resolved = _resolve_all(spec, root, gpus)
    _check_no_op(spec, resolved)
    built: dict[str, tuple[int, int, int]] = {}
    facts = {}
    for variant, config in resolved.items():
        kwargs = _model_kwargs(config)
        key = json.dumps(kwargs, sort_keys=True, default=str)
        if key not in built:  # else: same model as an earlier variant (e.g. only the data or the trainer differ)
            built[key] = _build_model(spec, variant, kwargs)
        facts[variant] = _cost_facts(config, *built[key])
    return facts


def _cost_facts(config: Any, numbers: int, trainable: int, buffers: int) -> dict[str, Any]:
    """A variant's checkpoint size (float32 weights and buffers, plus the optimizer's state of the trainable ones:
    two moments for the Adam family, one momentum buffer otherwise: an estimate) and checkpoints kept per run."""
    optimizer = str((config.model.get("optimizer") or {}).get("class_path", "")).lower()
    moments = 2 if "adam" in optimizer else 1
    if config.model.get("unfreeze_at_epoch") is not None:  # LP->FT: the backbone joins the optimizer later
        trainable = numbers
    best = config.get("checkpoint", {}).get("save_top_k", 1)
    max_epochs = config.trainer.get("max_epochs")
    best = (max_epochs or 1) if best == -1 else best
    last = 1 if config.get("last_checkpoint", {}).get("save_top_k", 1) else 0
    return {
        "params": numbers,
        "ckpt_bytes": 4 * (numbers + buffers + moments * trainable),
        "ckpts_kept": best + last,
        "max_epochs": max_epochs,
    }


def parse_variants(spec: AblationSpec, root: str | Path, gpus: int = 0) -> None:
    """Parse every variant's ``toolkit fit`` command at its first seed (one parser for all); builds nothing.

    Raises:
        ToolkitError: naming the variant and the reason.
    """
    _resolve_all(spec, root, gpus)


def _resolve_all(spec: AblationSpec, root: str | Path, gpus: int) -> dict[str, Any]:
    """Each variant's resolved ``fit`` config (a jsonargparse Namespace), parsed with one parser for all variants.

    Raises:
        ToolkitError: for the first variant (spec order) that does not parse, naming it.
    """
    from toolkit.lightning_cli import parse_configs

    first = {}
    for run in spec.runs():
        first.setdefault(run.variant, run)
    results = parse_configs([fit_args(spec, run, root, gpus=gpus) for run in first.values()])
    for variant, result in zip(first, results, strict=True):
        if isinstance(result, ToolkitError):
            raise ToolkitError(f"variant '{variant}' of {spec.path or spec.name}: {result}") from None
    return {variant: result.fit for variant, result in zip(first, results, strict=True)}


def _comparable(config: Any) -> str:
    """The resolved config without what names the run (variant, seed folder, config file paths)."""
    data = config.clone()
    for key in ("ablation", "trainer.default_root_dir", "config", "__path__"):
        if key in data:
            del data[key]
    return json.dumps(data.as_dict(), sort_keys=True, default=str)


def _check_no_op(spec: AblationSpec, resolved: dict[str, Any]) -> None:
    """A variant resolving to the config of the baseline or of another variant trains the same model twice."""
    seen: dict[str, str] = {}
    for variant in [spec.baseline, *(v for v in resolved if v != spec.baseline)]:
        key = _comparable(resolved[variant])
        if key in seen:
            other = seen[key]
            role = "the baseline" if other == spec.baseline else "variant"
            delta = ", ".join(f"{k}: {format_value(v)}" for k, v in spec.variants[variant].items()) or "nothing"
            raise ToolkitError(
                f"variant '{variant}' of {spec.path or spec.name} resolves to the same config as {role} '{other}' "
                f"(it sets {delta}, which the base configs already give); make it change something or remove it"
            )
        seen[key] = variant


def _model_kwargs(config: Any) -> dict[str, Any]:
    """ImageClassifier's arguments that shape the network (no optimizer, schedule or data links)."""
    model = config.model.as_dict()
    return {k: v for k, v in model.items() if k not in ("optimizer", "lr_scheduler", "num_classes", "class_names")}


def _build_model(spec: AblationSpec, variant: str, kwargs: dict[str, Any]) -> tuple[int, int, int]:
    """Build the variant's model on the CPU once (switches, zero-init guard, liveness probe) and drop it; its
    parameter count, trainable parameters (a frozen backbone's are not) and buffer elements."""
    import torch

    from toolkit.model.classifier import ImageClassifier

    state = torch.random.get_rng_state()
    try:
        model = ImageClassifier(**kwargs)
        params = list(model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        return sum(p.numel() for p in params), trainable, sum(b.numel() for b in model.buffers())
    except ToolkitError as err:
        raise ToolkitError(f"variant '{variant}' of {spec.path or spec.name}: {err}") from None
    except TypeError as err:  # timm rejects an argument this family does not take (e.g. zero_init_last on a ViT)
        raise ToolkitError(
            f"variant '{variant}' of {spec.path or spec.name}: {err}; leave that model option unset (null) for "
            f"{kwargs.get('backbone')}"
        ) from None
    finally:
        torch.random.set_rng_state(state)  # the check must not shift the random stream of anything run after it
