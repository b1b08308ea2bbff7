"""Data identity by content: image files with identical bytes in two classes or in two splits are refused (or dropped).

Links to one file are caught by the folder walk (``image_files``); copies are not: 20 copies of class ``a`` images
put into class ``b`` train a model on contradictory labels, and a copy in train and another in test scores the test
on an image the model trained on. The digests come from the decode check (``datasets.verify_images`` hashes the
bytes it decodes), so this costs no extra read. In-memory images (digits, torchvision) carry no digest: their
sources are curated datasets with fixed splits.

``duplicates: refuse`` (the default) names the first offending pair; ``drop`` keeps one copy of each image: the first
in train, val, test order, and none at all of an image whose copies carry different labels (its label is unknown).
Copies within one class of one split are harmless for the evaluation and kept under ``refuse``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from toolkit.data.datasets import ImageSamples
from toolkit.errors import ToolkitError

Duplicates = Literal["refuse", "drop"]
#: the split names, in the order a copy is kept under ``drop``
SPLITS = ("train", "val", "test")


def _groups(
    splits: Sequence[tuple[str, ImageSamples, list[str | None]]],
) -> dict[str, list[tuple[str, int, int, str]]]:
    """Digest -> its copies as (split, index, label, path), for the digests found more than once."""
    by_digest: dict[str, list[tuple[str, int, int, str]]] = defaultdict(list)
    for name, samples, digests in splits:
        for index, digest in enumerate(digests):
            if digest is not None:
                by_digest[digest].append((name, index, samples.labels[index], str(samples.images[index])))
    return {d: copies for d, copies in by_digest.items() if len(copies) > 1}


def check_duplicates(
    splits: Sequence[tuple[str, ImageSamples, list[str | None]]], class_names: Sequence[str], mode: Duplicates
) -> dict[str, ImageSamples]:
    """Refuse (``refuse``) or drop (``drop``) images whose bytes appear in two classes or two splits.

    Args:
        splits: (split name, its samples, the digest of each sample) for train, val and test.
        class_names: the class names in label order (for the message).
        mode: what to do about them.

    Returns:
        the splits to use, by name: unchanged under ``refuse``; without the dropped copies under ``drop``.
    """
    groups = _groups(splits)
    samples = {name: s for name, s, _ in splits}
    conflicts = [
        copies for copies in groups.values() if len({c[2] for c in copies}) > 1 or len({c[0] for c in copies}) > 1
    ]
    if mode == "refuse":
        if conflicts:
            first = conflicts[0]
            (split_a, _, label_a, path_a), (split_b, _, label_b, path_b) = (
                first[0],
                next(c for c in first[1:] if c[2] != first[0][2] or c[0] != first[0][0]),
            )
            where = (
                f"classes '{class_names[label_a]}' and '{class_names[label_b]}'"
                if label_a != label_b
                else f"the {split_a} and {split_b} splits"
            )
            more = f" (and {len(conflicts) - 1} more such image(s))" if len(conflicts) > 1 else ""
            raise ToolkitError(
                f"images {path_a} and {path_b} have identical bytes but are in {where}{more}: one image cannot teach "
                "two labels, nor test what was trained on; remove the copies, or pass --data.duplicates drop (keeps "
                "one copy: the first in train, val, test order; none of an image with two labels)"
            )
        return samples
    drop: dict[str, set[int]] = {name: set() for name in samples}
    for copies in groups.values():
        ordered = sorted(copies, key=lambda c: (SPLITS.index(c[0]), c[1]))
        keep = [] if len({c[2] for c in copies}) > 1 else ordered[:1]
        for copy in ordered:
            if copy not in keep:
                drop[copy[0]].add(copy[1])
    return {
        name: s if not drop[name] else s.subset([i for i in range(len(s)) if i not in drop[name]])
        for name, s in samples.items()
    }
