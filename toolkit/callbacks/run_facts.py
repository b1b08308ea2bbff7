"""What a fit ran on, measured from inside it: device (``cpu`` or the GPU's UUID), precision and the autocast dtype
its training forward saw, whether ``compile`` compiled and how often it compiled again, and the DDP world size.

A run's settings say what was asked for; these say what happened (bf16 that silently fell back, a compile that ran
eagerly, a run on another GPU than its slot). ``toolkit fit`` writes them into ``result.json`` (``facts``) and the
W&B summary (``facts/<name>``); ``benchmarks/gpu_smoke.sh`` asserts on them. torch's compile counters
(``torch._dynamo.utils.counters``, the ones ``torch._dynamo.explain`` reports) are the only record of what the
compiler did; no public API counts recompilations, so the deltas over the fit are read from them.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.hooks import RemovableHandle
from typing_extensions import override


def _compile_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "frames": int(counters["frames"]["ok"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def device_id(device: torch.device) -> str:
    """``cpu``, or the CUDA device's UUID as ``nvidia-smi -L`` prints it (``GPU-…``)."""
    if device.type != "cuda":
        return device.type
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


class RunFacts(pl.Callback):
    """Records the facts of the fit (see the module docstring); :meth:`summary` is what ``result.json`` gets."""

    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}
        self._start: dict[str, int] = {}
        self._after_first: dict[str, int] | None = None
        self._hooks: list[RemovableHandle] = []

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._after_first = _compile_counts(), None
        self.facts = {
            "device": device_id(pl_module.device),
            "device_name": torch.cuda.get_device_name(pl_module.device) if pl_module.device.type == "cuda" else "cpu",
            "precision": str(trainer.precision),
            "autocast_dtype": None,
            "param_dtype": str(next(pl_module.parameters()).dtype).removeprefix("torch."),
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "compile": bool(getattr(pl_module.hparams, "compile", False)),
        }
        # the autocast state inside the training forward: every direct child, the first one called tells
        self._hooks = [m.register_forward_pre_hook(self._seen) for m in pl_module.children()]

    def _seen(self, module: torch.nn.Module, args: Any) -> None:
        if not module.training or "autocast_seen" in self.facts:
            return
        device = next((p.device.type for p in module.parameters()), self.facts.get("device", "cpu"))
        kind = "cuda" if device == "cuda" else "cpu"
        enabled = torch.is_autocast_enabled(kind)
        self.facts["autocast_seen"] = True
        self.facts["autocast_dtype"] = str(torch.get_autocast_dtype(kind)).removeprefix("torch.") if enabled else None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._after_first is None:
            self._after_first = _compile_counts()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        now = _compile_counts()
        first = self._after_first or now
        self.facts.pop("autocast_seen", None)
        self.facts["compiled_graphs"] = now["graphs"] - self._start.get("graphs", 0)
        # graphs compiled after the first training step: recompilations (a new shape, LP->FT's unfreeze, ...)
        self.facts["recompiles"] = now["graphs"] - first["graphs"]
        self.facts["graph_breaks"] = now["graph_breaks"] - self._start.get("graph_breaks", 0)

    def summary(self) -> dict[str, Any]:
        """The facts, for ``result.json`` (empty before a fit started)."""
        return {k: v for k, v in self.facts.items() if k != "autocast_seen"}
