"""Turn a decoded image into 8-bit RGB: 16-bit grey scaled to 8 bits, 32-bit integer and float images refused.

PIL's ``convert("RGB")`` clips a 16-bit image (mode ``I;16``, e.g. a 16-bit PNG) at 255 instead of scaling it, so
almost every pixel turns white and distinct classes look alike. Here the 16-bit range maps onto 0..255 exactly.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from toolkit.errors import ToolkitError

#: 16-bit greyscale modes (PIL reads 16-bit PNG and TIFF greyscale images as these)
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: modes whose value range PIL does not record (32-bit integers, floats): no scaling to 8 bits is right for all
UNSCALABLE_MODES = ("I", "F", "I;32", "I;32B", "I;32L", "F;32")


def check_mode(mode: str, name: str) -> None:
    """Refuse an image whose pixels cannot be scaled to 8 bits (32-bit integer or float), naming the file."""
    if mode in UNSCALABLE_MODES:
        raise ToolkitError(
            f"image {name} has {mode!r} pixels (32-bit integer or float), whose range is unknown; save it as an "
            "8- or 16-bit image"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB; a 16-bit greyscale image is scaled (65535 -> 255, rounded), not clipped."""
    if image.mode in WIDE_MODES:
        wide = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    return image.convert("RGB")  # a copy: the caller may close the file
