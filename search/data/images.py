"""One image to the uint8 pixels a model sees: the package's single decoding path.

The data cache decodes class folders with it (:mod:`search.data.decode`) and ``predict``
reads its files with it (:mod:`search.outputs.model`), so a picture is classified as it
would have been trained: EXIF orientation applied (a phone photo upright, as a viewer shows
it), 16-bit samples scaled to 8 bits, palette, grayscale, alpha and CMYK converted to RGB (or
to grayscale, for a 1-channel model), then fitted to the input size as the
:class:`~search.data.fit.ImageFit` says (shorter side and centre crop, a plain resize, or a
letterbox; Pillow bicubic).

Files are untrusted: anything but a regular file is refused before it is opened (a FIFO
would block ``open`` forever, a device may never end), and an image of more pixels than the
limit is refused from its header, before its pixels are decoded.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search.config.files import MAX_PIXELS_VARIABLE, REGULAR_FILE, file_kind, kind_of_mode
from search.data.fit import Fitting, ImageFit, as_fit

if TYPE_CHECKING:
    from PIL import Image

# Pillow's modes of more than 8 bits per sample, and the largest value each holds.
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 255}
# Modes of one channel (alpha aside): ``data.channels: auto`` decodes them as grayscale.
_SINGLE_CHANNEL_MODES = frozenset({"1", "L", "LA", "La", *_WIDE_MODES})


class Undecodable(Exception):
    """Not an image that can be decoded whole; the message says why, without the file's name."""


def read_image(path: Path, fitting: Fitting, max_pixels: int) -> np.ndarray:
    """One image file as uint8 ``H x W x C`` (RGB or grayscale), upright, fitted as ``fitting`` says.

    Args:
        path: The file.
        fitting: An :class:`ImageFit`; a bare side: shorter side to it, then a centre crop
            to a square, RGB; ``None``: RGB as stored.
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
            return _fitted(opened, as_fit(fitting))


def stored_channels(paths: Sequence[Path]) -> int:
    """What ``data.channels: auto`` decodes ``paths`` to: 1 when every readable file is
    single-channel (alpha aside), else 3. Only headers are read; an unreadable file decides
    nothing here (decoding skips it and says why)."""
    for path in paths:
        try:
            if file_kind(path) != REGULAR_FILE:
                continue
            with _opened(path) as file, _decoding():
                from PIL import Image

                with Image.open(file) as opened:
                    if opened.mode not in _SINGLE_CHANNEL_MODES:
                        return 3
        except Undecodable:
            continue
    return 1


def image_array(image: Image.Image, fitting: Fitting) -> np.ndarray:
    """An opened PIL image as :func:`read_image` returns a file's pixels.

    Raises:
        Undecodable: its pixels cannot be decoded (a lazily opened, damaged file).
    """
    with _decoding():
        return _fitted(image, as_fit(fitting))


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


def _fitted(image: Image.Image, fit: ImageFit) -> np.ndarray:
    from PIL import ImageOps

    im = _to_channels(ImageOps.exif_transpose(image), fit.channels)  # EXIF orientation: as a viewer shows it
    if fit.size is not None:
        im = _resized(im, fit.size, fit.mode)
    pixels = np.asarray(im, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _resized(im: Any, size: int, mode: str) -> Any:
    """``im`` as a ``size`` square, per ``mode`` (see :class:`ImageFit`); Pillow's resampling is antialiased."""
    from PIL import Image, ImageOps

    side = (size, size)
    if mode == "square":
        return im.resize(side, Image.Resampling.BICUBIC)
    if mode == "pad":
        return ImageOps.pad(im, side, Image.Resampling.BICUBIC, color=0)
    return ImageOps.fit(im, side, Image.Resampling.BICUBIC)  # shorter side to size, centre crop


def _to_channels(im: Any, channels: int | None) -> Any:
    """``im`` as 8-bit RGB (3), grayscale (1), or as it is (``None``: grayscale if it has one channel).

    ``convert("RGB")`` handles palette (with or without transparency), grayscale, grayscale
    with alpha, RGBA (alpha dropped) and CMYK; but it clips 16-bit grayscale (``I;16``, ``I``)
    at 255, which turns a 16-bit PNG white, so those are scaled down to 8 bits first.
    Grayscale of a colour image is Pillow's ITU-R 601 luma, taken from its RGB.
    """
    if channels is None:
        channels = 1 if im.mode in _SINGLE_CHANNEL_MODES else 3
    if im.mode in _WIDE_MODES:
        im = _wide_to_gray(im)
    if channels == 3:
        return im.convert("RGB")
    return im if im.mode == "L" else im.convert("RGB").convert("L")


def _wide_to_gray(im: Any) -> Any:
    """A 16-bit or float single-channel image scaled down to 8-bit grayscale (mode ``L``)."""
    from PIL import Image

    wide = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)  # a float image may hold NaN
    scaled = np.clip(np.rint(wide * (255 / _WIDE_MODES[im.mode])), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)  # 2-D uint8: mode L
