"""Reading images and label maps: every pixel read faithfully or a clear error naming the file.

detectron2's ``read_image(path, "RGB")`` converts with PIL's ``Image.convert``, which *clips*
16-bit and 32-bit pixels to 255: a 16-bit PNG comes back almost all white, silently. Here:

* :func:`read_image` returns 8-bit images. 16-bit single-channel images (PIL modes ``I;16*``,
  and ``I`` when the file is a PNG, whose samples have at most 16 bits) are *scaled* to 8 bits
  (``round(v * 255 / 65535)``); 16-bit RGB(A) PNGs PIL already reduces to 8 bits. Modes without
  a known range (``I`` from other formats, ``F``) are refused with the file and mode named.
  Grayscale, palette, RGBA (alpha dropped, as detectron2 does), CMYK, YCbCr and the EXIF
  orientation keep detectron2's behaviour.
* :func:`read_label_map` returns the stored values exactly (class ids, panoptic RGB ids); a
  label map is never rescaled or converted between colour modes.

A file that cannot be decoded (missing, truncated, not an image) raises :class:`BadSampleError`
with the path; the training loader can skip such samples (:data:`BAD_SAMPLE_ERRORS`,
``DATALOADER.SKIP_BAD_SAMPLES``).
"""

from __future__ import annotations

import numpy as np
from detectron2.data.detection_utils import SizeMismatchError, convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps

__all__ = ["BAD_SAMPLE_ERRORS", "BadSampleError", "read_image", "read_label_map"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes PIL's convert("RGB") maps faithfully (no clipping).
_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr")
# Single-channel label-map modes whose values np.asarray returns unchanged.
_LABEL_MODES = ("1", "L", "P", "I", "F", *_SIXTEEN_BIT_MODES)


class BadSampleError(ValueError):
    """A sample that cannot be used as it is (unreadable file, sizes that disagree, labels out
    of range). The message names the file and the problem."""


# What a mapper raises for a sample that cannot be used (detectron2's check_image_size raises
# SizeMismatchError when the file's size differs from the dataset dict's).
BAD_SAMPLE_ERRORS = (BadSampleError, SizeMismatchError)


def _open(path: str) -> Image.Image:
    """The decoded image with its EXIF orientation applied; BadSampleError if undecodable."""
    try:
        with PathManager.open(path, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now, while the file is open: truncation shows here
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadSampleError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def _to_eight_bit(image: Image.Image, path: str) -> Image.Image:
    """``image`` as a PIL image in a mode ``convert`` maps to RGB without clipping."""
    mode = image.mode
    if mode in _EIGHT_BIT_MODES:
        return image
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and image.format == "PNG"):
        values = np.asarray(image).astype(np.uint32)
        if values.max(initial=0) > 65535 or values.min(initial=0) < 0:
            raise BadSampleError(f"image {path} (PIL mode {mode}) has values outside 16 bits")
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    raise BadSampleError(
        f"image {path} has PIL mode {mode!r}, which has no defined 8-bit range; store it as "
        "an 8- or 16-bit PNG/JPEG"
    )


def read_image(path: str, format: str = "RGB") -> np.ndarray:
    """An image file as an (H, W, C) uint8 array in ``format`` (``"RGB"``, ``"BGR"``, ``"L"``
    or another PIL mode, as detectron2's ``read_image``), EXIF orientation applied.

    Raises:
        BadSampleError: naming ``path``, if it cannot be decoded or its pixels have no faithful
            8-bit form.
    """
    if format is None:
        raise ValueError(f"read_image({path!r}) needs a format; label maps: read_label_map")
    image = _to_eight_bit(_open(path), path)
    return convert_PIL_to_numpy(image, format)


def read_label_map(path: str, rgb: bool = False) -> np.ndarray:
    """A label map's stored values, never rescaled, EXIF orientation applied as for images.

    Args:
        path: a single-channel map (class ids: PIL modes L, P (the indices, not the palette's
            colours), I;16, I, F, 1) or, with ``rgb``, an 8-bit RGB map (COCO panoptic ids).

    Returns:
        (H, W) array of the file's dtype, or (H, W, 3) uint8 with ``rgb``.

    Raises:
        BadSampleError: naming ``path``, if it cannot be decoded or has another mode.
    """
    image = _open(path)
    allowed = ("RGB",) if rgb else _LABEL_MODES
    if image.mode not in allowed:
        kind = "an 8-bit RGB" if rgb else "a single-channel"
        raise BadSampleError(
            f"label map {path} has PIL mode {image.mode!r}; expected {kind} map ({allowed})"
        )
    return np.asarray(image)
