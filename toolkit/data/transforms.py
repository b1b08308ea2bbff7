"""Image transforms resolved from a backbone's timm data config (size, mean/std, interpolation, crop)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.data.transforms import MaybeToTensor
from torch.utils.data import default_collate
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from toolkit.model.backbone import check_backbone_name

Augment = Literal["none", "mild", "basic", "randaugment", "trivialaugment"]


@dataclass(frozen=True)
class DataConfig:
    """What the transforms need from a backbone's pretrained config."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    crop_mode: str = "center"


def resolve_backbone_data_config(backbone: str, image_size: int | None = None) -> DataConfig:
    """The timm data config of ``backbone`` (no weights are built or fetched); ``image_size`` overrides the size."""
    check_backbone_name(backbone)
    cfg = timm.models.get_pretrained_cfg(backbone)
    cfg = cfg.to_dict() if cfg is not None else {}
    resolved = resolve_data_config({}, pretrained_cfg=cfg)
    config = DataConfig(
        input_size=tuple(resolved["input_size"]),
        mean=tuple(resolved["mean"]),
        std=tuple(resolved["std"]),
        interpolation=resolved["interpolation"],
        crop_pct=resolved["crop_pct"],
        crop_mode=resolved.get("crop_mode", "center"),
    )
    if image_size is not None:
        # a small override (e.g. 32 px digits) uses the whole image rather than a centre crop of it
        config = replace(config, input_size=(config.input_size[0], image_size, image_size), crop_pct=1.0)
    return config


def create_eval_transform(config: DataConfig) -> T.Compose:
    """Resize + centre crop + normalise, as timm evaluates the backbone."""
    return create_transform(
        config.input_size,
        is_training=False,
        interpolation=config.interpolation,
        mean=config.mean,
        std=config.std,
        crop_pct=config.crop_pct,
        crop_mode=config.crop_mode,
    )


def create_train_transform(config: DataConfig, augment: Augment) -> T.Compose:
    """The training transform for an ``augment`` level; ``none`` is the eval transform.

    ``mild`` is a small random shift (up to 10 % of the side) and rotation (up to 10 degrees), no flip and no
    crop: it keeps a digit or a letter the same symbol, which a flip or a crop from 8 % of an 8x8 image does not.
    ``basic`` is a random resized crop + horizontal flip; ``randaugment`` adds timm's RandAugment (rand-m9-mstd0.5);
    ``trivialaugment`` adds torchvision's TrivialAugmentWide (timm has no TrivialAugment) between the crop/flip
    and the normalisation.
    """
    if augment == "none":
        return create_eval_transform(config)
    if augment == "mild":
        # timm's factory has no affine-only level; torchvision's RandomAffine on the resized image, then normalise
        resize, *final = create_eval_transform(config).transforms
        return T.Compose([resize, T.RandomAffine(degrees=10, translate=(0.1, 0.1)), *final])
    common = dict(
        is_training=True,
        interpolation=config.interpolation,
        mean=config.mean,
        std=config.std,
        color_jitter=0.0,
        hflip=0.5,
    )
    if augment == "basic":
        return create_transform(config.input_size, **common)
    if augment == "randaugment":
        return create_transform(config.input_size, auto_augment="rand-m9-mstd0.5", **common)
    if augment == "trivialaugment":
        primary, _, final = create_transform(config.input_size, separate=True, **common)
        return T.Compose([*primary.transforms, T.TrivialAugmentWide(), *final.transforms])
    raise ValueError(f"unknown augment level {augment!r}")


class _ToTensorDeferred:
    """torchvision's ``to_tensor`` without its last step for 8-bit RGB and grayscale images (to float, / 255): those
    stay uint8 for :class:`BatchNormalize` to convert with the batch. Anything else takes ``to_tensor`` itself."""

    def __call__(self, pic: Any) -> torch.Tensor:
        if isinstance(pic, torch.Tensor):
            return pic
        if isinstance(pic, Image.Image) and pic.mode in ("RGB", "L"):
            return TF.pil_to_tensor(pic)  # to_tensor's own array, view and permute, before its division
        return TF.to_tensor(pic)


class BatchNormalize:
    """The collate function of an eval loader: stacks the batch, then what each image's ``to_tensor`` + ``Normalize``
    would do, once for the whole batch: to float, / 255 (8-bit images), minus the mean, over the std.

    Elementwise operations in the same order on the same values: the same numbers, bit for bit, as the per-image
    transform (``tests/test_data.py`` compares them), for a fraction of its per-image cost (a test pass over
    1,377 digits at 32 px spent ~20 % of its time in per-image tensor calls).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, batch: list[tuple[torch.Tensor, Any]]) -> list[Any]:
        images = [image for image, _ in batch]
        dtype = torch.get_default_dtype()
        if all(image.dtype == torch.uint8 for image in images):
            stacked = torch.stack(images).to(dtype).div(255)
        else:  # what to_tensor returned for each image, stacked
            stacked = torch.stack([i.to(dtype).div(255) if i.dtype == torch.uint8 else i for i in images])
        labels = default_collate([label for _, label in batch])
        return [TF.normalize(stacked, self.mean, self.std, inplace=True), labels]


def split_eval_transform(transform: Callable | None) -> tuple[T.Compose, BatchNormalize] | None:
    """An eval transform ending in ``to_tensor`` + ``Normalize`` (timm's) as its per-image part (up to uint8) and the
    collate function that finishes it on each batch; None for any other transform (it then runs per image)."""
    steps = list(getattr(transform, "transforms", None) or [])
    if len(steps) < 2:
        return None
    *head, to_tensor, normalize = steps
    if type(to_tensor) not in (MaybeToTensor, T.ToTensor) or type(normalize) is not T.Normalize:
        return None
    return T.Compose([*head, _ToTensorDeferred()]), BatchNormalize(normalize.mean, normalize.std)
