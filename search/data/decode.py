"""Image files to uint8 arrays, in a process pool when there are many; tensor layout and resizing.

Decoding JPEGs is the slow part of loading a class-folder source (about 10 s for CIFAR-10),
which is why it happens once per source (see :mod:`search.data.cache`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from search.config import UserError

# Below this many images a process pool costs more to start than it saves.
POOL_MIN_IMAGES = 2000
DECODE_CHUNK = 1000


def decode_images(paths: Sequence[Path], image_size: int | None) -> np.ndarray:
    """Decode image files into one uint8 ``N x H x W x 3`` array, in a process pool when many.

    Processes, not threads: Pillow holds the GIL for much of a small JPEG's decode, and
    measured threads were slower than one core here.

    Args:
        paths: The image files, in the order wanted.
        image_size: Resize (shorter side, then centre crop) to this square side; ``None``
            requires all images square and of one size.

    Returns:
        The images; ``0 x S x S x 3`` for no paths (``S`` is ``image_size`` or 1).

    Raises:
        UserError: A file is not a readable image, or sizes differ without ``image_size``.
    """
    if not paths:
        side = image_size or 1
        return np.zeros((0, side, side, 3), dtype=np.uint8)
    chunks = [list(paths[i : i + DECODE_CHUNK]) for i in range(0, len(paths), DECODE_CHUNK)]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(len(chunks), cpus)
    if len(paths) < POOL_MIN_IMAGES or workers < 2:
        arrays = [decode_chunk(c, image_size) for c in chunks]
    else:
        arrays = _decode_in_pool(chunks, image_size, workers)
    _check_chunks_agree(chunks, arrays)
    return np.concatenate(arrays)


def _decode_in_pool(chunks: list[list[Path]], image_size: int | None, workers: int) -> list[np.ndarray]:
    """:func:`decode_chunk` of every chunk in a pool of ``workers`` processes, in order."""
    import multiprocessing

    # fork: the workers need only Pillow and numpy, and start in milliseconds.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(decode_chunk, chunks, [image_size] * len(chunks)))


def _check_chunks_agree(chunks: list[list[Path]], arrays: list[np.ndarray]) -> None:
    """Each chunk checked its own images; chunks may still disagree with each other."""
    for chunk, array in zip(chunks, arrays, strict=True):
        if array.shape[1:] != arrays[0].shape[1:]:
            raise UserError(
                f"images differ in size ({chunks[0][0]} is {arrays[0].shape[2]}x{arrays[0].shape[1]}, "
                f"{chunk[0]} is {array.shape[2]}x{array.shape[1]}); set data.image_size to resize them on load"
            )


def decode_chunk(paths: Sequence[Path], image_size: int | None) -> np.ndarray:
    """Decode a few images (one pool task); see :func:`decode_images`.

    Raises:
        UserError: A file is not a readable image, or sizes differ without ``image_size``.
    """
    out: list[np.ndarray] = []
    for path in paths:
        arr = _decode_one(path, image_size)
        if image_size is None and (arr.shape[0] != arr.shape[1] or (out and arr.shape != out[0].shape)):
            what = f"{paths[0]} is {out[0].shape[1]}x{out[0].shape[0]}, " if out else ""
            raise UserError(
                f"images differ in size or are not square ({what}{path} is {arr.shape[1]}x{arr.shape[0]}); "
                "set data.image_size to resize them on load"
            )
        out.append(arr)
    return np.stack(out)


def _decode_one(path: Path, image_size: int | None) -> np.ndarray:
    """One image as uint8 ``H x W x 3`` RGB, fitted to ``image_size`` if given."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # grayscale, palette, RGBA, CMYK -> RGB (alpha dropped)
            if image_size is not None:
                # Shorter side to image_size, centre crop; Pillow's resampling is antialiased.
                im = ImageOps.fit(im, (image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """``N x H x W x 3`` array to a contiguous ``N x 3 x H x W`` tensor."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def resize_tensor(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 images, in chunks to bound the float copy."""
    out = [
        F.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for c in images.split(4096)
    ]
    return torch.cat(out)
