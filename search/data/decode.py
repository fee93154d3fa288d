"""Image files to uint8 arrays, in a process pool when there are many; tensor layout and resizing.

Each file is decoded by :func:`search.data.images.read_image`, the one decoding path that
``predict`` uses too.

Decoding JPEGs is the slow part of loading a class-folder source (about 10 s for CIFAR-10),
which is why it happens once per source (see :mod:`search.data.cache`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from search.config import UserError
from search.config.files import default_pixel_limit
from search.data.fit import Fitting, ImageFit, as_fit
from search.data.images import Undecodable, read_image

# Below this many images a process pool costs more to start than it saves.
POOL_MIN_IMAGES = 2000
DECODE_CHUNK = 1000


@dataclass(frozen=True)
class Decoded:
    """Images decoded from a list of files, and the files that could not be.

    Attributes:
        images: uint8 ``N x H x W x C``, one per readable file, in order.
        kept: For each image, the index of its file in the list decoded.
        skipped: The files that cannot be decoded (corrupt, truncated, unknown mode), with why.
    """

    images: np.ndarray
    kept: list[int]
    skipped: list[tuple[Path, str]]


def decode_images(paths: Sequence[Path], fitting: Fitting, max_pixels: int | None = None) -> Decoded:
    """Decode image files into one uint8 ``N x H x W x C`` array, in a process pool when many.

    Processes, not threads: Pillow holds the GIL for much of a small JPEG's decode, and
    measured threads were slower than one core here. A file that cannot be decoded is
    skipped (and listed), not fatal: one corrupt file in 50,000 should not stop a search.

    Args:
        paths: The image files, in the order wanted.
        fitting: How images are fitted (:class:`ImageFit`; a bare side: shorter side, then
            centre crop, RGB); no size requires all images square and of one size. With
            ``channels: None`` a grayscale image among colour ones is made RGB.
        max_pixels: Skip an image of more pixels; default :func:`default_pixel_limit`.

    Returns:
        The images (``0 x S x S x C`` for none; ``S`` is the size or 1), which files they
        are, and the skipped files.

    Raises:
        UserError: Sizes differ without ``image_size``; a bad ``RESNET_SEARCH_MAX_PIXELS``.
    """
    fit = as_fit(fitting)
    limit = max_pixels if max_pixels is not None else default_pixel_limit()
    chunks = [list(paths[i : i + DECODE_CHUNK]) for i in range(0, len(paths), DECODE_CHUNK)]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(len(chunks), cpus)
    if len(paths) < POOL_MIN_IMAGES or workers < 2:
        parts = [decode_chunk(c, fit, limit) for c in chunks]
    else:
        parts = _decode_in_pool(chunks, fit, limit, workers)
    decoded = [(chunk, part) for chunk, part in zip(chunks, parts, strict=True) if len(part.kept)]
    arrays = same_channels([part.images for _, part in decoded])
    _check_chunks_agree([chunk for chunk, _ in decoded], arrays)
    kept = [i * DECODE_CHUNK + k for i, part in enumerate(parts) for k in part.kept]
    skipped = [s for part in parts for s in part.skipped]
    if not decoded:
        return _no_images(fit, kept, skipped)
    return Decoded(np.concatenate(arrays), kept, skipped)


def _no_images(fit: ImageFit, kept: list[int], skipped: list[tuple[Path, str]]) -> Decoded:
    side = fit.size or 1
    return Decoded(np.zeros((0, side, side, fit.channels or 3), dtype=np.uint8), kept, skipped)


def same_channels(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """``H x W x C`` images (or ``N x H x W x C`` batches) all of one channel count: grayscale
    ones repeated to RGB when any is RGB (as Pillow's ``convert("RGB")`` of grayscale does).
    An empty batch takes the others' count and decides nothing."""
    counts = {a.shape[-1] for a in arrays if a.size}
    if not counts:
        return arrays
    target = max(counts)
    return [a if a.shape[-1] == target else _as_channels(a, target) for a in arrays]


def _as_channels(array: np.ndarray, channels: int) -> np.ndarray:
    if not array.size:
        return np.zeros((*array.shape[:-1], channels), dtype=array.dtype)
    return np.repeat(array, channels, axis=-1)


def _decode_in_pool(chunks: list[list[Path]], fit: ImageFit, max_pixels: int, workers: int) -> list[Decoded]:
    """:func:`decode_chunk` of every chunk in a pool of ``workers`` processes, in order."""
    import multiprocessing

    # fork: the workers need only Pillow and numpy, and start in milliseconds.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(decode_chunk, chunks, [fit] * len(chunks), [max_pixels] * len(chunks)))


def _check_chunks_agree(chunks: list[list[Path]], arrays: list[np.ndarray]) -> None:
    """Each chunk checked its own images; chunks may still disagree with each other."""
    for chunk, array in zip(chunks, arrays, strict=True):
        if array.shape[1:] != arrays[0].shape[1:]:
            raise UserError(
                f"images differ in size ({chunks[0][0]} is {arrays[0].shape[2]}x{arrays[0].shape[1]}, "
                f"{chunk[0]} is {array.shape[2]}x{array.shape[1]}); set data.image_size to resize them on load"
            )


def decode_chunk(paths: Sequence[Path], fitting: Fitting, max_pixels: int | None = None) -> Decoded:
    """Decode a few images (one pool task) with :func:`search.data.images.read_image`, the
    decoding ``predict`` uses too; see :func:`decode_images`.

    Raises:
        UserError: Sizes differ without a size to fit them to.
    """
    fit = as_fit(fitting)
    limit = max_pixels if max_pixels is not None else default_pixel_limit()
    out: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[Path, str]] = []
    for index, path in enumerate(paths):
        try:
            arr = read_image(path, fit, limit)
        except Undecodable as error:
            skipped.append((path, str(error)))
            continue
        if fit.size is None and (arr.shape[0] != arr.shape[1] or (out and arr.shape[:2] != out[0].shape[:2])):
            what = f"{paths[kept[0]]} is {out[0].shape[1]}x{out[0].shape[0]}, " if out else ""
            raise UserError(
                f"images differ in size or are not square ({what}{path} is {arr.shape[1]}x{arr.shape[0]}); "
                "set data.image_size to resize them on load"
            )
        out.append(arr)
        kept.append(index)
    if not out:
        return _no_images(fit, kept, skipped)
    return Decoded(np.stack(same_channels(out)), kept, skipped)


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """``N x H x W x C`` array to a contiguous ``N x C x H x W`` tensor."""
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
