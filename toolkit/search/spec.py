"""Read a search spec (``searches/<name>.yaml``) into a validated :class:`SearchSpec`; torch-free.

A spec names base configs (as an ablation's ``base``), common overrides, the ranges to search (dotted config key ->
``{low, high, log, int}`` or ``{values: [...]}``; or the path of a ``toolkit doctor`` ranges file), the sampler
(``tpe``, the default, ``random`` or ``grid``), the selection metric and the stages: ``trials: N`` samples N new
configurations, ``batch`` at a time (TPE learns from the batches before), ``top: K`` retrains the K best of the stage
before; each stage adds its own overrides (e.g. more epochs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit import keys
from toolkit.errors import ToolkitError
from toolkit.study.fields import check_name, did_you_mean, parse_overrides, read_yaml, resolve_base
from toolkit.study.spec import DEFAULT_PROJECT

_KEYS = ("name", "base", "overrides", "ranges", "sampler", "metric", "seed", "stages", "project", "pruning")
_PRUNING_KEYS = ("warmup_epochs", "min_trials")
_STAGE_KEYS = ("name", "trials", "top", "overrides", "metric", "batch")
_RANGE_KEYS = ("low", "high", "log", "int", "values", "n")
SAMPLERS = ("tpe", "random", "grid")
#: trials a TPE stage asks at a time unless it says ``batch``: the first batch is random, each later one learns from
#: those before (the spec fixes it, not --workers, so a search's trials do not depend on how many run at once)
TPE_BATCH = 4
#: selection metrics: what every ``toolkit fit`` run logs on validation (a search that selects on test data would
#: report an optimistically biased score)
METRICS = tuple(keys.VAL_SUMMARY)


@dataclass(frozen=True)
class Range:
    """One searched key: an interval (``log`` for a log-uniform draw, ``integer`` for whole numbers; ``n`` grid
    points) or a list of values."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    values: list[Any] | None = None
    n: int | None = None
    integer: bool = False

    def grid(self) -> list[Any]:
        """The grid points: ``values``, or ``n`` points from low to high (evenly spaced on a log scale if ``log``)."""
        if self.values is not None:
            return list(self.values)
        n = self.n or 3
        if self.log:
            ratio = (self.high / self.low) ** (1 / (n - 1))
            points = [float(f"{self.low * ratio**i:.6g}") for i in range(n)]
        else:
            points = [float(f"{self.low + (self.high - self.low) * i / (n - 1):.6g}") for i in range(n)]
        return list(dict.fromkeys(round(p) for p in points)) if self.integer else points


@dataclass(frozen=True)
class Stage:
    """One stage: ``trials`` new samples asked ``batch`` at a time, or the ``top`` best of the previous stage
    retrained with its overrides."""

    name: str
    trials: int = 0
    top: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str = keys.VAL_ACC
    batch: int = 0


@dataclass(frozen=True)
class SearchSpec:
    """A validated search; ``base`` holds resolved absolute paths."""

    name: str
    base: list[str]
    overrides: dict[str, Any]
    ranges: dict[str, Range]
    sampler: str
    seed: int
    stages: list[Stage]
    project: str = DEFAULT_PROJECT
    path: str = ""
    #: ``{warmup_epochs, min_trials}`` of the median pruner for the sampling stage, or None (no pruning)
    pruning: dict[str, int] | None = None

    def fingerprint(self) -> str:
        """A hash of what the search computes (the base configs' content, not their paths); a resume must match."""
        payload = asdict(self)
        payload.pop("path")
        payload["base"] = [read_yaml(Path(p)) for p in self.base]
        text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_search(path: str | Path) -> SearchSpec:
    """Read and validate a search spec; raises ToolkitError with one line saying what to fix."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"search spec '{path}' not found; pass a YAML file such as searches/digits.yaml")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ToolkitError(f"{path}: a search spec is a mapping with keys {', '.join(_KEYS)}")
    _known(raw, _KEYS, str(path))
    for key in ("name", "base", "ranges", "stages"):
        if key not in raw:
            raise ToolkitError(f"{path}: missing '{key}'; see searches/digits.yaml for a complete spec")
    name = check_name(raw["name"], f"{path}: name")
    bases = [raw["base"]] if isinstance(raw["base"], str) else raw["base"]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) for b in bases):
        raise ToolkitError(f"{path}: 'base' lists config files, e.g. base: [configs/digits.yaml]")
    base = [resolve_base(b, path) for b in bases]
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ToolkitError(f"{path}: sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ToolkitError(f"{path}: 'seed' must be a non-negative integer, got {seed!r}")
    ranges = _ranges(raw["ranges"], path, sampler)
    overrides = parse_overrides(raw.get("overrides"), f"{path}: overrides")
    clash = sorted(set(ranges) & set(overrides))
    if clash:
        raise ToolkitError(f"{path}: {', '.join(clash)} is both searched and fixed in overrides; keep one")
    metric = _metric(raw.get("metric", keys.VAL_ACC), f"{path}: metric")
    stages = _stages(raw["stages"], path, metric, sampler, ranges)
    project = raw.get("project", DEFAULT_PROJECT)
    if not isinstance(project, str) or not project:
        raise ToolkitError(f"{path}: 'project' is the W&B project name, a non-empty string")
    pruning = _pruning(raw.get("pruning"), f"{path}: pruning")
    return SearchSpec(name, base, overrides, ranges, sampler, seed, stages, project, str(path), pruning)


def _pruning(value: Any, where: str) -> dict[str, int] | None:
    """``pruning: {warmup_epochs: 1, min_trials: 2}`` (``true``: those defaults; absent or ``false``: off)."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ToolkitError(f"{where} is true, or a mapping like {{warmup_epochs: 1, min_trials: 2}}")
    _known(value, _PRUNING_KEYS, where)
    out = {"warmup_epochs": value.get("warmup_epochs", 1), "min_trials": value.get("min_trials", 2)}
    for key, number in out.items():
        if not isinstance(number, int) or isinstance(number, bool) or number < (0 if key == "warmup_epochs" else 1):
            raise ToolkitError(f"{where}: '{key}' is a whole number (warmup_epochs >= 0, min_trials >= 1)")
    return out


def _known(raw: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            raise ToolkitError(f"{where}: unknown key '{key}'{hint}; allowed: {', '.join(allowed)}")


def _metric(value: Any, where: str) -> str:
    if value not in METRICS:
        hint = did_you_mean(str(value), METRICS)
        raise ToolkitError(
            f"{where} {value!r} is not a metric the runs log for selection{hint}; use one of {', '.join(METRICS)}"
        )
    return value


def _ranges(value: Any, path: Path, sampler: str) -> dict[str, Range]:
    if isinstance(value, str):  # a `toolkit doctor` ranges file
        file = next((p for p in (Path(value), path.parent / value) if p.is_file()), None)
        if file is None:
            raise ToolkitError(f"{path}: ranges file '{value}' not found; run toolkit doctor or list the ranges")
        value = read_yaml(file)
    if not isinstance(value, dict) or not value:
        raise ToolkitError(f"{path}: 'ranges' maps config keys to {{low, high, log}} or {{values: [...]}}")
    ranges = {}
    for key, entry in parse_overrides(value, f"{path}: ranges").items():
        where = f"{path}: range '{key}'"
        if not isinstance(entry, dict):
            raise ToolkitError(f"{where} must look like {{low: 1e-4, high: 1e-1, log: true}} or {{values: [a, b]}}")
        _known(entry, _RANGE_KEYS, where)
        ranges[key] = _range(entry, where, sampler)
    return ranges


def _range(entry: dict[str, Any], where: str, sampler: str) -> Range:
    if "values" in entry:
        values = entry["values"]
        if set(entry) - {"values"} or not isinstance(values, list) or not values:
            raise ToolkitError(f"{where}: 'values' is a non-empty list and goes alone")
        return Range(values=list(values))
    low, high, log, n = entry.get("low"), entry.get("high"), entry.get("log", False), entry.get("n")
    integer = entry.get("int", False)
    if not isinstance(integer, bool):
        raise ToolkitError(f"{where}: 'int' is true or false")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise ToolkitError(f"{where}: give numeric 'low' and 'high' (or 'values')")
    if integer and not all(float(v).is_integer() for v in (low, high)):
        raise ToolkitError(f"{where}: int: true needs whole-number 'low' and 'high' (got {low}, {high})")
    if low >= high:
        raise ToolkitError(f"{where}: low {low} must be below high {high}")
    if not isinstance(log, bool):
        raise ToolkitError(f"{where}: 'log' is true or false")
    if log and low <= 0:
        raise ToolkitError(f"{where}: log: true needs low > 0 (got {low}); a log scale cannot reach 0 or below")
    if n is not None and (not isinstance(n, int) or n < 2):
        raise ToolkitError(f"{where}: 'n' (grid points) is an integer >= 2")
    if sampler == "grid" and n is None:
        raise ToolkitError(f"{where}: a grid search needs 'n' grid points (or 'values') for each range")
    return Range(float(low), float(high), log, None, n, integer)


def _stages(value: Any, path: Path, metric: str, sampler: str, ranges: dict[str, Range]) -> list[Stage]:
    if not isinstance(value, list) or not value:
        raise ToolkitError(
            f"{path}: 'stages' lists stages, e.g. [{{name: coarse, trials: 16}}, {{name: fine, top: 3}}]"
        )
    stages: list[Stage] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ToolkitError(f"{path}: stage {i + 1} needs a name, e.g. {{name: coarse, trials: 16}}")
        where = f"{path}: stage '{entry['name']}'"
        _known(entry, _STAGE_KEYS, where)
        stage_name = check_name(entry["name"], where)
        if any(s.name == stage_name for s in stages):
            raise ToolkitError(f"{where} is listed twice; name each stage once")
        trials, top = entry.get("trials", 0), entry.get("top", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (trials, top)):
            raise ToolkitError(f"{where}: 'trials' and 'top' are non-negative integers")
        if bool(trials) == bool(top):
            raise ToolkitError(f"{where}: give either 'trials' (new samples) or 'top' (best of the stage before)")
        if top and not stages:
            raise ToolkitError(f"{where}: the first stage samples ('trials: N'); 'top' needs a stage before it")
        if trials and stages:
            raise ToolkitError(f"{where}: only the first stage samples; later stages retrain the 'top' K")
        if top and top > (stages[-1].trials or stages[-1].top):
            raise ToolkitError(f"{where}: top {top} is more than the stage before runs")
        if sampler == "grid" and trials:
            size = 1
            for r in ranges.values():
                size *= len(r.grid())
            if trials > size:
                raise ToolkitError(f"{where}: {trials} trials but the grid has only {size} points; lower 'trials'")
        stage_metric = _metric(entry.get("metric", metric), f"{where}: metric")
        batch = entry.get("batch", (TPE_BATCH if sampler == "tpe" else trials) if trials else 0)
        if trials and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
            raise ToolkitError(f"{where}: 'batch' (trials asked at a time) is a positive integer, got {batch!r}")
        if top and "batch" in entry:
            raise ToolkitError(f"{where}: 'batch' belongs to the sampling stage; a 'top' stage retrains all at once")
        overrides = parse_overrides(entry.get("overrides"), where)
        stages.append(Stage(stage_name, trials, top, overrides, stage_metric, min(batch, trials) if trials else 0))
    return stages
