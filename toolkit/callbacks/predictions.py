"""PredictionWriter: ``toolkit predict``'s CSV, one row per image in dataset order, written safely under DDP."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

from toolkit.data.datasets import NO_LABEL

#: the columns of predictions.csv, in order
COLUMNS = ("index", "path", "label", "label_name", "pred", "pred_name", "prob")


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` (see `COLUMNS`): each rank writes the rows it predicted, rank 0 merges them.

    Under DDP each rank sees a strided share of the data (``DistributedSampler``, padded with repeats so the ranks
    have equal shares); the dataset index of every row comes from Lightning's ``batch_indices``, so rank 0 puts the
    rows back in dataset order and keeps each index once. ``path`` maps a row back to its image, ``label`` is empty
    where the image's class is unknown. An existing file is never overwritten: the next free ``predictions_vN.csv``
    is used instead.

    Args:
        root: folder of the CSV (the run's ``default_root_dir``).
        ids: what each dataset row is called (its file path, or e.g. ``digits:test[3]``).
        labels: each row's label index, `NO_LABEL` where unknown.
        class_names: class names in label order (the model's).
    """

    def __init__(self, root: str | Path, ids: Sequence[str], labels: Sequence[int], class_names: Sequence[str]) -> None:
        super().__init__(write_interval="epoch")
        self.root, self.ids, self.labels, self.class_names = Path(root), list(ids), list(labels), list(class_names)
        self.path: Path | None = None  # where rank 0 wrote the merged file

    def _part(self, rank: int) -> Path:
        return self.root / f".predictions.rank{rank}.csv"

    def _rows(self, predictions: list[Any], batch_indices: Sequence[Any]) -> list[dict[str, Any]]:
        if batch_indices and batch_indices[0] and isinstance(batch_indices[0][0], list):
            batch_indices = batch_indices[0]  # one list per dataloader; predict has one
        rows = []
        for output, indices in zip(predictions, batch_indices, strict=True):
            probs = output["probs"].float()
            best, preds = probs.max(-1)
            for index, pred, prob in zip(indices, preds.tolist(), best.tolist(), strict=True):
                label = self.labels[index]
                known = label != NO_LABEL
                rows.append(
                    {
                        "index": index,
                        "path": self.ids[index],
                        "label": label if known else None,
                        "label_name": self.class_names[label] if known else None,
                        "pred": pred,
                        "pred_name": self.class_names[pred] if pred < len(self.class_names) else str(pred),
                        "prob": prob,
                    }
                )
        return rows

    @override
    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        import pandas as pd

        self.root.mkdir(parents=True, exist_ok=True)
        part = pd.DataFrame(self._rows(list(predictions), batch_indices), columns=list(COLUMNS))
        part.astype({"label": "Int64"}).to_csv(self._part(trainer.global_rank), index=False)
        trainer.strategy.barrier("predictions_written")
        if not trainer.is_global_zero:
            return
        parts = [self._part(rank) for rank in range(trainer.world_size)]
        table = pd.concat([pd.read_csv(p, dtype={"label": "Int64"}) for p in parts], ignore_index=True)
        # DistributedSampler repeats a few samples so every rank gets as many: keep each index once
        table = table.drop_duplicates("index").sort_values("index")
        self.path = _free_path(self.root / "predictions.csv")
        tmp = self.path.with_suffix(".csv.tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, self.path)
        for p in parts:
            p.unlink(missing_ok=True)


def _free_path(path: Path) -> Path:
    """``path`` if it does not exist, else the first free ``<stem>_vN<suffix>`` (earlier predictions are kept)."""
    version = 1
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_v{version}{path.suffix}")
        version += 1
    return candidate
