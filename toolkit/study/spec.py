"""Read an ablation spec (``ablations/<name>.yaml``) into an :class:`AblationSpec` and expand it into runs.

Torch-free: ``toolkit ablate status`` and ``toolkit report`` load specs without importing torch or Lightning.

Base config paths are resolved against the spec file's directory first, then against the current directory;
``AblationSpec.base`` holds the resolved absolute paths.

A run's id is a hash of what the run computes: the ablation and variant names, the parsed content of the base
configs (comments and formatting do not count; class paths in their flat-layout spelling, so a moved class or a short
name does not rename runs), the merged overrides and the seed. The same spec always names the
same runs; editing a config or an override names new ones.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit._moved import flat_path
from toolkit.errors import ToolkitError
from toolkit.study.fields import (
    check_name,
    did_you_mean,
    parse_overrides,
    parse_tune,
    read_yaml,
    resolve_base,
    str_list,
)
from toolkit.study.layout import STUDY_FILES, run_dir

DEFAULT_METRICS = ["test/acc", "test/f1"]
DEFAULT_PROJECT = "toolkit"
DESIGNS = ("leave-one-out", "factorial")
_KEYS = (
    "name",
    "base",
    "overrides",
    "seeds",
    "baseline",
    "variants",
    "factors",
    "metrics",
    "project",
    "slurm",
    "tune",
)


@dataclass(frozen=True)
class Run:
    """One (variant, seed) of an ablation: a single ``toolkit fit`` process and a single W&B run."""

    id: str
    ablation: str
    variant: str
    seed: int
    overrides: dict[str, Any]

    def directory(self, root: str | Path) -> Path:
        """Where the run keeps its checkpoints, W&B logs and ``run.log``: ``<root>/<ablation>/<variant>/seed<N>``."""
        return run_dir(root, self.ablation, self.variant, self.seed)


@dataclass(frozen=True)
class AblationSpec:
    """A validated ablation: base configs, common overrides, variants (deltas on top), seeds and report metrics."""

    name: str
    base: list[str]
    overrides: dict[str, Any]
    seeds: list[int]
    baseline: str
    variants: dict[str, dict[str, Any]]
    metrics: list[str]
    project: str
    path: str = ""
    #: ``{factor: overrides that switch it off}`` when the variants were generated from a ``factors`` block
    factors: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``"explicit"``, ``"leave-one-out"`` or ``"factorial"``
    design: str = "explicit"
    #: the ``slurm:`` block (sbatch options for ``--executor slurm``; checked by the Slurm executor, not in run ids)
    slurm: dict[str, Any] = field(default_factory=dict)
    #: ``{dotted key: [values]}``: each variant's value chosen on val before its seeds run (`toolkit.study.tuning`)
    tune: dict[str, list[Any]] = field(default_factory=dict)
    #: the variants ``tune`` tunes (None: every one); the others run at the baseline's choice (``tune: auto``)
    tune_rows: tuple[str, ...] | None = None
    #: the parsed base configs, in ``base`` order: read once when the spec is made (None: read them now), and
    #: handed on by ``dataclasses.replace``, so nothing reads a base config again
    base_data: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.base_data is None:
            object.__setattr__(self, "base_data", tuple(read_yaml(Path(p)) for p in self.base))  # frozen dataclass

    def runs(self) -> list[Run]:
        """Every (variant, seed) in spec order: variants as listed (baseline first), then seeds."""
        return list(self._runs)

    @functools.cached_property
    def _runs(self) -> tuple[Run, ...]:
        """The runs, computed once per spec (their ids hash the base data, which is costly for many seeds)."""
        base_data = list(self.base_data or ())
        order = [self.baseline, *(v for v in self.variants if v != self.baseline)]
        runs = []
        for variant in order:
            merged = {**self.overrides, **self.variants[variant]}
            for seed in self.seeds:
                runs.append(Run(_run_id(self.name, variant, base_data, merged, seed), self.name, variant, seed, merged))
        return tuple(runs)


def load_spec(path: str | Path) -> AblationSpec:
    """Read and validate an ablation spec.

    Args:
        path: the spec's YAML file.

    Raises:
        ToolkitError: with a one-line message saying what to fix.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"ablation spec '{path}' not found; pass a YAML file such as ablations/quickstart.yaml")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ToolkitError(f"{path}: an ablation spec is a mapping with keys {', '.join(_KEYS)}")
    for key in raw:
        if key not in _KEYS:
            raise ToolkitError(
                f"{path}: unknown key '{key}'{did_you_mean(str(key), _KEYS)}; allowed: {', '.join(_KEYS)}"
            )
    for key in ("name", "base", "seeds"):
        if key not in raw:
            raise ToolkitError(f"{path}: missing '{key}'; see ablations/quickstart.yaml for a complete spec")
    name = check_name(raw["name"], f"{path}: name")
    base = [resolve_base(b, path) for b in str_list(raw["base"], f"{path}: base")]
    if not base:
        raise ToolkitError(f"{path}: 'base' is empty; list at least one config, e.g. base: [configs/digits.yaml]")
    overrides = parse_overrides(raw.get("overrides"), f"{path}: overrides")
    seeds = _seeds(raw["seeds"], path)
    factors, design = _factors(raw.get("factors"), path)
    baseline = raw.get("baseline", "full")
    baseline = check_name(baseline, f"{path}: baseline")
    variants = _expand_factors(factors, design, baseline, path)
    if raw.get("variants") is not None and not isinstance(raw["variants"], dict):
        raise ToolkitError(
            f"{path}: 'variants' maps variant names to overrides, e.g. no-bn: {{model.batchnorm: 'off'}}"
        )
    for vname, delta in (raw.get("variants") or {}).items():
        vname = check_name(vname, f"{path}: variant")
        if vname in variants:
            raise ToolkitError(f"{path}: variant '{vname}' is also generated by 'factors'; rename it")
        variants[vname] = parse_overrides(delta, f"{path}: variant '{vname}'")
    for vname in variants:
        if vname.lower() in STUDY_FILES:  # lower: on a case-insensitive filesystem 'Report' is the report folder
            raise ToolkitError(
                f"{path}: a variant may not be named '{vname}' (the runner keeps its {', '.join(STUDY_FILES)} beside "
                "the variant folders); rename it"
            )
    if not variants:
        raise ToolkitError(f"{path}: no variants; add 'variants' (name: overrides) or a 'factors' block")
    if baseline not in variants:
        hint = did_you_mean(baseline, list(variants))
        raise ToolkitError(f"{path}: baseline '{baseline}' is not a variant{hint}; add it (e.g. {baseline}: {{}})")
    metrics = str_list(raw.get("metrics", DEFAULT_METRICS), f"{path}: metrics")
    project = raw.get("project", DEFAULT_PROJECT)
    if not isinstance(project, str) or not project:
        raise ToolkitError(f"{path}: 'project' is the W&B project name, a non-empty string")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ToolkitError(f"{path}: 'slurm' maps sbatch options to values, e.g. slurm: {{account: proj, qos: normal}}")
    base_data = tuple(read_yaml(Path(p)) for p in base)
    tune_rows = None
    if raw.get("tune") == AUTO:
        tune, tune_rows = auto_tune(base_data, overrides, baseline, variants, path)
    else:
        tune = parse_tune(raw.get("tune"), f"{path}: tune")
    spec = AblationSpec(
        name, base, overrides, seeds, baseline, variants, metrics, project, str(path), factors, design, slurm, tune,
        tune_rows, base_data,
    )  # fmt: skip
    _check_distinct(spec, path)
    return spec


#: override keys (prefixes) whose change alters how a row is optimised (transfer mode, init, BatchNorm mode,
#: optimiser, schedule, budget): such a row run at the baseline's lr is not a fair row unless tuned
OPTIMISATION_KEYS = (
    "model.freeze_backbone",
    "model.unfreeze_at_epoch",
    "model.pretrained",
    "model.batchnorm",
    "model.probe",
    "model.backbone_lr_scale",
    "model.optimizer",
    "model.lr_scheduler",
    "trainer.max_epochs",
)
#: a callback whose presence changes the schedule (its class path, as written in ``trainer.callbacks``)
SCHEDULE_CALLBACKS = ("SnapshotEnsemble",)


def changes_optimisation(delta: dict[str, Any]) -> list[str]:
    """The keys of a variant's overrides that alter how it is optimised (`OPTIMISATION_KEYS`, schedule callbacks)."""
    found = [k for k in delta if k.startswith(OPTIMISATION_KEYS)]
    found += [k for k, v in delta.items() if k == "trainer.callbacks" and any(c in str(v) for c in SCHEDULE_CALLBACKS)]
    return found


#: ``tune: auto``: the lr of the rows that change the optimisation (and the baseline's), chosen on val around the
#: baseline's lr; every other row runs at the baseline's choice
AUTO = "auto"
LR_KEY = "model.optimizer.init_args.lr"
#: ``tune: auto``'s grid, as factors of the baseline's lr (the baseline's own first: a tie keeps it)
AUTO_FACTORS = (1.0, 1 / 3, 3.0)


def auto_tune(
    base_data: tuple[Any, ...], overrides: dict[str, Any], baseline: str, variants: dict[str, Any], path: Path
) -> tuple[dict[str, list[Any]], tuple[str, ...]]:
    """``tune: auto``: the lr grid (`AUTO_FACTORS` times the baseline's lr, from the base configs and the common
    overrides) and the rows it tunes: the baseline and every row whose overrides change the optimisation
    (`changes_optimisation`)."""
    lr = _setting(LR_KEY, base_data, overrides)
    if not isinstance(lr, int | float) or isinstance(lr, bool) or lr <= 0:
        raise ToolkitError(
            f"{path}: tune: auto tunes the lr around the baseline's, but no base config sets {LR_KEY}; set it there "
            f"or give the grid yourself, e.g. tune: {{{LR_KEY}: [1.0e-4, 3.0e-4]}}"
        )
    grid = [float(f"{lr * factor:.3g}") for factor in AUTO_FACTORS]
    rows = tuple(
        v
        for v, delta in variants.items()
        if v == baseline
        or (changes_optimisation(delta) and LR_KEY not in delta and not _steps_nothing(base_data, overrides, delta))
    )
    return {LR_KEY: grid}, rows


def _setting(key: str, base_data: tuple[Any, ...], *layers: dict[str, Any]) -> Any:
    """A dotted key's value: the last override layer that sets it, else the last base config that does (None)."""
    for layer in reversed(layers):
        if key in layer:
            return layer[key]
    for data in reversed(base_data):
        node: Any = data
        for part in key.split("."):
            node = node.get(part, None) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def _steps_nothing(base_data: tuple[Any, ...], overrides: dict[str, Any], delta: dict[str, Any]) -> bool:
    """A row that never takes an optimizer step (an L-BFGS probe alone: frozen, never unfrozen) has no lr to tune."""

    def get(key: str) -> Any:
        return _setting(key, base_data, overrides, delta)

    frozen = get("model.freeze_backbone") is True and get("model.unfreeze_at_epoch") is None
    return frozen and get("model.probe") == "lbfgs"


def _flat_class_paths(data: Any, key: str = "") -> Any:
    """``data`` with every class path in its flat-layout spelling (``_moved.flat_path``): a run's id does not change
    when a class moves or is named by its short name."""
    if isinstance(data, dict):
        return {k: _flat_class_paths(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [_flat_class_paths(v, key) for v in data]
    if isinstance(data, str) and key.endswith("class_path"):
        return flat_path(data)
    return data


def _run_id(name: str, variant: str, base_data: list[Any], overrides: dict[str, Any], seed: int) -> str:
    base_data, overrides = _flat_class_paths(base_data), _flat_class_paths(overrides)
    payload = {"ablation": name, "variant": variant, "base": base_data, "overrides": overrides, "seed": seed}
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _seeds(value: Any, path: Path) -> list[int]:
    seeds = [value] if isinstance(value, int) else value
    if not isinstance(seeds, list) or not seeds:
        raise ToolkitError(f"{path}: 'seeds' needs at least one integer seed, e.g. seeds: [0, 1]")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 2**32 - 1 for s in seeds):
        raise ToolkitError(f"{path}: 'seeds' must be integers in [0, 2**32 - 1] (numpy's range), got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ToolkitError(f"{path}: 'seeds' lists a seed twice: {seeds}; list each once")
    return list(seeds)


def _factors(value: Any, path: Path) -> tuple[dict[str, dict[str, Any]], str]:
    """Parse ``factors: {design: leave-one-out|factorial, switches: {factor: overrides that switch it off}}``.

    (Not ``off:``: YAML 1.1 reads an unquoted ``off`` key as the boolean false.)
    """
    if value is None:
        return {}, "explicit"
    usage = "factors: {design: leave-one-out, switches: {bn: {model.batchnorm: 'off'}, ...}}"
    if not isinstance(value, dict) or set(value) - {"design", "switches"} or "switches" not in value:
        raise ToolkitError(f"{path}: 'factors' must look like {usage}")
    design = value.get("design", "leave-one-out")
    if design not in DESIGNS:
        raise ToolkitError(f"{path}: factors.design {design!r} is not one of {', '.join(DESIGNS)}")
    if not isinstance(value["switches"], dict) or not value["switches"]:
        raise ToolkitError(f"{path}: factors.switches needs at least one factor; {usage}")
    factors = {}
    for factor, delta in value["switches"].items():
        factors[check_name(factor, f"{path}: factor")] = parse_overrides(delta, f"{path}: factor '{factor}'")
        if not factors[factor]:
            raise ToolkitError(f"{path}: factor '{factor}' changes nothing; give the overrides that switch it off")
    return factors, design


def _expand_factors(
    factors: dict[str, dict[str, Any]], design: str, baseline: str, path: Path
) -> dict[str, dict[str, Any]]:
    """Leave-one-out: the baseline plus ``no-<factor>`` for each factor; factorial: every subset switched off.

    The baseline (every factor on) is named ``baseline``; a name that a switched-off variant also gets would let
    one overwrite the other (``baseline: no-augment`` used to drop the all-on model silently), so it is an error.
    """
    if not factors:
        return {}
    names = list(factors)
    if design == "leave-one-out":
        subsets = [()] + [(f,) for f in names]
    else:
        subsets = [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
    variants = {}
    for subset in subsets:
        vname = "+".join(f"no-{f}" for f in subset) or baseline
        if vname in variants:
            raise ToolkitError(
                f"{path}: baseline '{baseline}' is also the name of the variant that switches off "
                f"{' and '.join(subset)}; name the baseline (all factors on) something else, e.g. baseline: full"
            )
        variants[vname] = {k: v for f in subset for k, v in factors[f].items()}
    return variants


def _check_distinct(spec: AblationSpec, path: Path) -> None:
    """Two variants that resolve to the same overrides would train the same model twice under two names."""
    seen: dict[str, str] = {}
    for vname, delta in spec.variants.items():
        key = json.dumps({**spec.overrides, **delta}, sort_keys=True, default=str)
        if key in seen:
            raise ToolkitError(f"{path}: variants '{seen[key]}' and '{vname}' give the same config; remove one")
        seen[key] = vname
