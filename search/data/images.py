"""One image to the uint8 RGB pixels a model sees: the package's single decoding path.

The data cache decodes class folders with it (:mod:`search.data.decode`) and ``predict``
reads its files with it (:mod:`search.outputs.model`), so a picture is classified as it
would have been trained: EXIF orientation applied (a phone photo upright, as a viewer shows
it), 16-bit samples scaled to 8 bits, palette, grayscale, alpha and CMYK converted to RGB,
then fitted to the input size (shorter side, centre crop, Pillow bicubic).

Files are untrusted: anything but a regular file is refused before it is opened (a FIFO
would block ``open`` forever, a device may never end), and an image of more pixels than the
limit is refused from its header, before its pixels are decoded.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search.config.files import MAX_PIXELS_VARIABLE, REGULAR_FILE, file_kind, kind_of_mode

if TYPE_CHECKING:
    from PIL import Image

# Pillow's modes of more than 8 bits per sample, and the largest value each holds.
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 255}


class Undecodable(Exception):
    """Not an image that can be decoded whole; the message says why, without the file's name."""


def read_image(path: Path, image_size: int | None, max_pixels: int) -> np.ndarray:
    """One image file as uint8 ``H x W x 3`` RGB, upright, fitted to ``image_size`` if given.

    Args:
        path: The file.
        image_size: Shorter side to this, then a centre crop to a square; ``None``: as stored.
        max_pixels: Refuse an image of more pixels (read from its header).

    Raises:
        Undecodable: not a regular file, over the pixel limit, or not an image that decodes whole.
    """
    kind = file_kind(path)
    if kind is None:
        raise Undecodable("no such file")
    if kind != REGULAR_FILE:
        raise Undecodable(f"{kind}, not a regular file")
    with _opened(path) as file, _decoding():
        from PIL import Image

        with Image.open(file) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise Undecodable(
                    f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,} "
                    f"(raise it with --max-pixels or {MAX_PIXELS_VARIABLE})"
                )
            return _fitted(opened, image_size)


def image_array(image: Image.Image, image_size: int | None) -> np.ndarray:
    """An opened PIL image as :func:`read_image` returns a file's pixels.

    Raises:
        Undecodable: its pixels cannot be decoded (a lazily opened, damaged file).
    """
    with _decoding():
        return _fitted(image, image_size)


@contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """``path`` opened for reading without blocking, and checked again to be a regular file:
    it may have been replaced by a FIFO since it was stat'ed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise Undecodable(f"cannot be opened ({error.strerror or error})") from None
    with os.fdopen(fd, "rb") as file:
        kind = kind_of_mode(os.fstat(fd).st_mode)
        if kind != REGULAR_FILE:
            raise Undecodable(f"{kind}, not a regular file")
        yield file


@contextmanager
def _decoding() -> Iterator[None]:
    """Any failure of Pillow as :class:`Undecodable`, and its warnings silenced.

    Every exception, not a list: Pillow's plugins answer hostile bytes with ``OSError``,
    ``ValueError``, ``SyntaxError``, ``struct.error``, ``IndexError``, ``TypeError``,
    ``ZeroDivisionError``, ``MemoryError``... and a bad file must never end a run or ``predict``.
    Its warnings (corrupt EXIF, a palette's transparency, its decompression-bomb warning: the
    pixel limit is ours) would be lines of their own on stderr, once per file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        except Undecodable:
            raise
        except Exception as error:
            raise Undecodable(f"not a readable image ({type(error).__name__}: {error})") from None


def _fitted(image: Image.Image, image_size: int | None) -> np.ndarray:
    from PIL import Image, ImageOps

    im = _to_rgb(ImageOps.exif_transpose(image))  # EXIF orientation: as a viewer shows it
    if image_size is not None:
        # Shorter side to image_size, centre crop; Pillow's resampling is antialiased.
        im = ImageOps.fit(im, (image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def _to_rgb(im: Any) -> Any:
    """An opened image as 8-bit RGB, whatever its mode.

    ``convert("RGB")`` handles palette (with or without transparency), grayscale, grayscale
    with alpha, RGBA (alpha dropped) and CMYK; but it clips 16-bit grayscale (``I;16``, ``I``)
    at 255, which turns a 16-bit PNG white, so those are scaled down to 8 bits first.
    """
    from PIL import Image

    if im.mode in _WIDE_MODES:
        wide = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)  # a float image may hold NaN
        scaled = np.clip(np.rint(wide * (255 / _WIDE_MODES[im.mode])), 0, 255).astype(np.uint8)
        im = Image.fromarray(scaled)  # 2-D uint8: mode L
    return im.convert("RGB")
