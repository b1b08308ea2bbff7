"""What a fit says about its data: one line with the source, classes and split sizes, and a warning when the test
split is too small to resolve a few points. Printed once per run (rank 0) by ``ImageDataModule.setup``."""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

from lightning.fabric.utilities.rank_zero import rank_zero_only

from toolkit.data.datasets import Splits
from toolkit.data.sources import SourceArgs, get_source


class Described(Protocol):
    """What the data line reads of the data module (``datamodule.ImageDataModule`` is one)."""

    source: str
    splits: Splits
    num_classes: int
    split_seed: int
    val_fraction: float
    test_fraction: float
    train_subset: int | None
    eval_subset: int | None
    test_split: str
    test_subset: int | None

    def source_args(self) -> SourceArgs: ...


def say(line: str, stream: TextIO | None = None) -> None:
    """Print ``line`` once per run: on rank 0 (every DDP rank sets its data up)."""
    if rank_zero_only.rank == 0:
        print(line, file=stream or sys.stdout, flush=True)


def carved(data: Described) -> dict[str, float]:
    """The splits held out of the data by fraction (the source has no such split), with their shares."""
    shares = {"val": data.val_fraction, "test": data.test_fraction}
    return {name: shares[name] for name in get_source(data.source).carved(data.source_args())}


def data_line(data: Described) -> str:
    """``data: digits, 10 classes, train 300 / val 120 / test 1377 (...)``: where the counts come from."""
    splits = data.splits
    label = get_source(data.source).label
    source = label(data.source_args()) if label is not None else data.source
    held = carved(data)
    notes = []
    if held:
        shares = " + ".join(f"{name} {share:.0%}" for name, share in held.items())
        whole = "" if len(held) == 2 else " of train"
        notes.append(f"{shares} held out{whole}, split seed {data.split_seed}")
    if data.train_subset is not None:
        notes.append(f"train_subset {data.train_subset}")
    if data.eval_subset is not None:
        notes.append(f"eval_subset {data.eval_subset}")
    if data.test_split == "rest":
        notes.append("test_split rest: every image not trained or validated on")
    if data.test_subset is not None:
        notes.append(f"test_subset {data.test_subset}")
    counts = f"train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)}"
    line = f"data: {source}, {data.num_classes} classes, {counts}"
    return line + (f" ({'; '.join(notes)})" if notes else "")


def small_test_warning(data: Described) -> str | None:
    """A warning when one test image is worth more than one point of test accuracy (fewer than 100 images)."""
    size = len(data.splits.test)
    if size == 0 or size >= 100:
        return None
    if data.test_split == "split" and (data.train_subset is not None or data.eval_subset is not None):
        fix = "--data.test_split rest tests on every image not trained or validated on"
    elif data.test_subset is not None:
        fix = "raise --data.test_subset"
    elif "test" in carved(data):
        fix = f"raise --data.test_fraction (now {data.test_fraction}) or add images"
    else:
        fix = "test on more images"
    return (
        f"warning: the test split has {size} images: one image is {100 / size:.1f} points of test accuracy, so a "
        f"difference of a few points is within one or two images; {fix}, and compare over several seeds"
    )
