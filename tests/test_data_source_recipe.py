"""The data-source recipe of docs/architecture.md, followed: a toy source registered here, and nothing else edited.

A source is one loader with one signature (``SourceArgs`` -> ``Splits``) added with ``register_source``. The
datamodule must then load it by name (with its fractions and split seed), train a real tiny model on it in process,
and refuse a name that is not registered with one line naming the sources.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.data import sources
from toolkit.data.datamodule import ImageDataModule
from toolkit.data.datasets import ImageSamples, Splits, three_way
from toolkit.data.sources import Source, SourceArgs
from toolkit.errors import ToolkitError

SEEN: list[SourceArgs] = []


def _stripes(args: SourceArgs) -> Splits:
    """Two classes of 8x8 images: horizontal or vertical stripes (60 each), split by the datamodule's fractions."""
    SEEN.append(args)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for label in (0, 1):
        for _ in range(60):
            pixels = np.zeros((8, 8), np.uint8)
            offset = int(rng.integers(0, 2))
            if label == 0:
                pixels[offset::2, :] = 255
            else:
                pixels[:, offset::2] = 255
            images.append(Image.fromarray(np.repeat(pixels[:, :, None], 3, axis=2), mode="RGB"))
            labels.append(label)
    train, val, test = three_way(ImageSamples(images, labels), args.val_fraction, args.test_fraction, args.seed)
    return Splits(train, val, test, ["horizontal", "vertical"])


@pytest.fixture
def stripes() -> Iterator[None]:
    SEEN.clear()
    sources.register_source("stripes", Source(_stripes))  # the recipe's one step
    yield
    del sources.SOURCES["stripes"]


@pytest.mark.usefixtures("stripes")
def test_a_registered_source_loads_by_name_with_the_datamodules_options() -> None:
    data = ImageDataModule(
        source="stripes",
        backbone="test_resnet",
        image_size=32,
        val_fraction=0.25,
        test_fraction=0.25,
        split_seed=3,
        batch_size=16,
    )
    assert [SourceArgs(None, None, False, 0.25, 0.25, 3)] == SEEN
    splits = data.splits
    assert (len(splits.train), len(splits.val), len(splits.test)) == (60, 30, 30)
    assert data.class_names == ["horizontal", "vertical"] and sorted(set(splits.test.labels)) == [0, 1]


@pytest.mark.usefixtures("stripes")
def test_a_registered_source_trains_through_toolkit_fit(tmp_path: Path) -> None:
    from toolkit.lightning_cli import run_cli

    cli = run_cli([
        "fit", "--model.backbone", "test_resnet", "--model.pretrained", "false", "--data.source", "stripes",
        "--data.image_size", "32", "--data.batch_size", "16", "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    assert cli.model.hparams.num_classes == 2 and cli.model.hparams.class_names == ["horizontal", "vertical"]
    assert "val/acc" in cli.trainer.callback_metrics


def test_an_unregistered_source_is_one_line_naming_the_sources() -> None:
    with pytest.raises(ToolkitError, match=r"^data.source 'stripes' is not a source; choose one of digits, folder"):
        sources.get_source("stripes")
