"""Opening real-world image files as plain 8-bit RGB.

Files in the wild come as grayscale, 16-bit, palette, CMYK, with alpha, rotated by an
EXIF tag, enormous or 1x1. Everything here turns them into one thing, an 8-bit RGB
``PIL.Image``, the same way every time, so that training, export parity, calibration
and verification all see identical pixels.

Policy choices (documented because they change pixels):

* Transparency is composited over **white**. Pixels under a fully transparent area keep
  whatever colour the encoder left there (often black or noise); dropping the alpha
  channel would show that to the model, while white matches how the image is displayed.
* 16-bit samples (``I;16*`` and the ``I`` mode 16-bit PNG/TIFF decode to) are scaled by
  255/65535 to 8 bits rather than clipped, so a 16-bit photo keeps its look.
* Float (``F``) images are read as 0..1 when every value lies in [0, 1], else as 0..255.
* JPEGs are decoded with DCT scaling (``Image.draft``) to no less than
  :data:`DRAFT_MIN_SIDE` pixels on each side: a 6000x4000 photo decodes in a fraction of
  the time and memory, and every classifier input size is far below that bound.
* An image with more than :data:`MAX_PIXELS` pixels after drafting is refused with a
  :class:`~edge_tl.errors.DataError` (a decompression-bomb guard) instead of being
  decoded into gigabytes of memory.

PIL and numpy are imported inside the functions so that ``import edge_tl.data`` stays cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from edge_tl._lazy import lazy_import
from edge_tl.errors import DataError

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: File name extensions (lower case) recognised as images in a folder dataset.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)

#: JPEG decoding is reduced (by 1/2, 1/4 or 1/8) only while both sides stay >= this.
DRAFT_MIN_SIDE = 1024

#: Largest image (in pixels, after JPEG drafting) that is decoded: Pillow's own bomb limit.
MAX_PIXELS = 89_478_485

_WHITE = (255, 255, 255)


def _pil() -> "object":
    return lazy_import("PIL.Image", purpose="reading images")


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for a non-hidden file name with a recognised image extension."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def open_image(
    path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS, draft_side: int = DRAFT_MIN_SIDE
) -> "PILImage.Image":
    """Decode ``path`` fully into an upright 8-bit RGB image, or raise :class:`DataError`.

    The whole file is decoded (not just its header), so a truncated file fails here
    rather than in the middle of training. A JPEG is decoded at the smallest DCT scale
    that keeps both sides at least ``draft_side``.
    """
    Image = _pil()
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise DataError(f"cannot read {path!r}: {exc.strerror or exc}") from exc
    if size == 0:
        raise DataError(f"{path!r} is an empty file (0 bytes)")
    try:
        # Pillow warns (DecompressionBombWarning) from 1x to 2x its limit and refuses above.
        # The warning is left alone (filtering it is not thread-safe); the real check is
        # below, after drafting, where a huge JPEG is no longer huge.
        with Image.open(path) as im:
            if im.format == "JPEG":
                # Keeps the mode; only the DCT scale changes (both sides stay >= draft_side).
                im.draft(im.mode, (draft_side, draft_side))
            width, height = im.size
            if width * height > max_pixels:
                raise DataError(
                    f"{path!r} is {width}x{height} = {width * height} pixels, more than the "
                    f"{max_pixels} allowed (a decompression-bomb guard); downscale the file"
                )
            im.load()
            image = im.copy()
            orientation = _orientation(im)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives here only where warnings are turned into errors.
        raise DataError(f"{path!r} is too large to decode safely ({exc}); downscale the file") from exc
    except Image.UnidentifiedImageError as exc:
        raise DataError(f"{path!r} is not an image Pillow can read (unknown or corrupt format)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports truncation and corrupt streams as OSError/SyntaxError/ValueError.
        raise DataError(f"{path!r} is corrupt or truncated: {exc}") from exc
    return to_rgb(_apply_orientation(image, orientation))


def _orientation(im: "PILImage.Image") -> int:
    """The EXIF orientation tag (1 = upright) of an opened file."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - an unreadable EXIF block must not discard good pixels
        return 1


def _apply_orientation(image: "PILImage.Image", orientation: int) -> "PILImage.Image":
    """Rotate/flip as the EXIF orientation tag says (the way every viewer shows the photo).

    This is what ``PIL.ImageOps.exif_transpose`` does, applied from the tag read before the
    file was closed, since a copied image does not always keep its EXIF block.
    """
    Image = _pil()
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return image if method is None else image.transpose(method)


def to_rgb(image: "PILImage.Image") -> "PILImage.Image":
    """The image as 8-bit RGB, with the policies described in the module docstring.

    Works on any in-memory image (it does not read EXIF; :func:`open_image` does that).
    """
    Image = _pil()
    np = lazy_import("numpy")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("L", "CMYK", "YCbCr", "RGBX", "HSV", "1"):
        return image.convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        scale = 255.0 if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0 else 1.0
        gray = np.clip(np.rint(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise DataError(f"images in mode {mode!r} cannot be converted to RGB ({exc}); save the file as RGB") from exc
