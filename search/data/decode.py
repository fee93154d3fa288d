"""Image files to uint8 arrays, in a process pool when there are many; tensor layout and resizing.

Each file is decoded by :func:`search.data.images.read_image`, the one decoding path that
``predict`` uses too.

Decoding JPEGs is the slow part of loading a class-folder source (about 10 s for CIFAR-10),
which is why it happens once per source (see :mod:`search.data.cache`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from search.config import UserError
from search.config.files import default_pixel_limit
from search.data.cache import ImageWriter
from search.data.fit import Fitting, ImageFit, as_fit
from search.data.images import Undecodable, read_image
from search.data.progress import Progress

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


@dataclass(frozen=True)
class Written:
    """What :func:`decode_into` wrote: which files (indices into its list), which it skipped, and
    the images' ``C x H x W`` (None when none was readable)."""

    kept: list[int]
    skipped: list[tuple[Path, str]]
    shape: tuple[int, ...] | None


def decode_into(
    paths: Sequence[Path],
    fit: ImageFit,
    writer: ImageWriter,
    *,
    train: bool,
    progress: Progress | None = None,
) -> Written:
    """Decode image files chunk by chunk, each chunk appended to ``writer`` as ``N x C x H x W``
    as soon as it is decoded (in order): only a few chunks are ever held in memory.

    Processes, not threads: Pillow holds the GIL for much of a small JPEG's decode, and
    measured threads were slower than one core here. A file that cannot be decoded is
    skipped (and listed), not fatal: one corrupt file in 50,000 should not stop a search.

    Args:
        paths: The image files, in the order wanted.
        fit: How images are fitted (:class:`ImageFit`), with its channels decided (the
            file layout is fixed by the first chunk): no size requires all images square
            and of one size.
        writer: The cache's images file.
        train: Whether these are training images (their channel sums make the mean/std).
        progress: Advanced by each chunk's file count.

    Raises:
        UserError: Sizes differ without ``image_size``; a bad ``RESNET_SEARCH_MAX_PIXELS``.
    """
    kept: list[int] = []
    skipped: list[tuple[Path, str]] = []
    first: tuple[list[Path], np.ndarray] | None = None
    for offset, chunk, part in _decoded_chunks(paths, fit, default_pixel_limit()):
        if len(part.kept):
            if first is None:
                first = (chunk, part.images)
            _check_chunks_agree([first[0], chunk], [first[1], part.images])
            writer.append(to_nchw(part.images), train=train)
        kept += [offset + k for k in part.kept]
        skipped += part.skipped
        if progress is not None:
            progress.advance(len(chunk))
    shape = None if first is None else (first[1].shape[3], *first[1].shape[1:3])
    return Written(kept, skipped, shape)


def _decoded_chunks(paths: Sequence[Path], fit: ImageFit, max_pixels: int) -> Iterator[tuple[int, list[Path], Decoded]]:
    """``(offset, files, decoded)`` of each chunk of ``paths``, in order: in a process pool when
    there are many, with at most two chunks per worker in flight (the rest wait to be submitted)."""
    chunks = [list(paths[i : i + DECODE_CHUNK]) for i in range(0, len(paths), DECODE_CHUNK)]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(len(chunks), cpus)
    if len(paths) < POOL_MIN_IMAGES or workers < 2:
        for i, chunk in enumerate(chunks):
            yield i * DECODE_CHUNK, chunk, decode_chunk(chunk, fit, max_pixels)
        return
    import multiprocessing

    # fork: the workers need only Pillow and numpy, and start in milliseconds.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending: deque[Future[Decoded]] = deque()
        for i in range(len(chunks)):
            while len(pending) < 2 * workers and i + len(pending) < len(chunks):
                pending.append(pool.submit(decode_chunk, chunks[i + len(pending)], fit, max_pixels))
            yield i * DECODE_CHUNK, chunks[i], pending.popleft().result()


def decode_images(paths: Sequence[Path], fitting: Fitting, max_pixels: int | None = None) -> Decoded:
    """Decode image files into one uint8 ``N x H x W x C`` array (see :func:`decode_into`, which
    the data cache uses and which writes each chunk out instead of keeping them all).

    Returns:
        The images (``0 x S x S x C`` for none; ``S`` is the size or 1), which files they
        are, and the skipped files.

    Raises:
        UserError: Sizes differ without ``image_size``; a bad ``RESNET_SEARCH_MAX_PIXELS``.
    """
    fit = as_fit(fitting)
    limit = max_pixels if max_pixels is not None else default_pixel_limit()
    parts = list(_decoded_chunks(paths, fit, limit))
    decoded = [(chunk, part) for _, chunk, part in parts if len(part.kept)]
    arrays = same_channels([part.images for _, part in decoded])
    _check_chunks_agree([chunk for chunk, _ in decoded], arrays)
    kept = [offset + k for offset, _, part in parts for k in part.kept]
    skipped = [s for _, _, part in parts for s in part.skipped]
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
