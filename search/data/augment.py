"""Whole-batch augmentation and normalization: tensor ops on a batch, never a per-image loop.

As in airbench, a batch is augmented where it lives (on the GPU during training), so the
device never waits on a ``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from search.config import Augment
from search.data.resized_crop import random_resized_crop


def augment_batch(
    images: torch.Tensor,
    augment: Augment,
    generator: torch.Generator | None = None,
    flip_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random resized crop, random crop with padding, horizontal flip and cutout for a whole batch at once.

    Crop and flip are one gather: each output pixel reads the source pixel at a per-sample
    row/column offset (reflected or out of range for zero padding), with the columns of
    flipped samples reversed. The padded batch is never built. Random numbers are drawn on
    the generator's device, so results depend only on the generator's state.

    Args:
        images: ``N x C x H x W`` uint8 or float images on any device.
        augment: ``random_resized_crop`` (first: :mod:`search.data.resized_crop`), padding
            (``crop_padding``, ``padding_mode``), ``flip`` and ``cutout`` size.
        generator: Source of randomness (CPU or the images' device); the global RNG if None.
        flip_mask: Which samples to mirror (``N`` bools on the images' device), for
            ``flip: alternating``, whose caller keeps each image's state; None draws
            them at random when ``augment.flip`` is set.

    Returns:
        Augmented images, same shape, dtype and device (the input itself if ``augment``
        does nothing). Cutout fills with 0 (black for uint8, the mean once normalized).
    """
    if augment.random_resized_crop is not None:
        images = random_resized_crop(images, augment.random_resized_crop, generator)
    n, _, h, w = images.shape
    pad, size = augment.crop_padding, augment.cutout
    if n == 0 or (pad == 0 and not augment.flip and flip_mask is None and size == 0):
        return images
    device = images.device
    gen_device = generator.device if generator is not None else device

    def randint(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n, 1), generator=generator, device=gen_device).to(device)

    # Draw everything up front, in a fixed order: chunking below cannot change the result.
    dy, dx = (randint(2 * pad + 1) - pad, randint(2 * pad + 1) - pad) if pad else (None, None)
    flip: torch.Tensor | None = None
    if flip_mask is not None:
        flip = flip_mask.view(n, 1)
    elif augment.flip:
        flip = randint(2).bool()
    cy, cx = (randint(h), randint(w)) if size else (None, None)

    out = images
    if dy is not None and dx is not None:
        out = _crop(images, dy, dx, flip, augment.padding_mode)
    elif flip is not None:
        out = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
    if cy is not None and cx is not None:
        out = _cutout(out, cy, cx, size)
    return out


def _crop(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None, mode: str
) -> torch.Tensor:
    """Shift each sample by ``(dy, dx)`` (``N x 1`` each), mirrored where ``flip``, padding by ``mode``."""
    _, _, h, w = images.shape
    device = images.device
    rows, row_ok = _shifted(torch.arange(h, device=device) + dy, h, mode)
    cols, col_ok = _shifted(torch.arange(w, device=device) + dx, w, mode)
    if flip is not None:
        cols, col_ok = torch.where(flip, cols.flip(-1), cols), torch.where(flip, col_ok.flip(-1), col_ok)
    out = _gather(images, rows, cols)
    if mode == "zeros":
        out = out.masked_fill(~(row_ok[:, None, :, None] & col_ok[:, None, None, :]), 0)
    return out


def _cutout(images: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size x size`` square centred at ``(cy, cx)`` (``N x 1`` each) in each sample.

    DeVries & Taylor: the square may be centred anywhere and is clipped at the borders.
    """
    _, _, h, w = images.shape
    ys, xs = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
    in_y = (ys >= cy - size // 2) & (ys < cy - size // 2 + size)
    in_x = (xs >= cx - size // 2) & (xs < cx - size // 2 + size)
    return images.masked_fill(in_y[:, None, :, None] & in_x[:, None, None, :], 0)


def _shifted(index: torch.Tensor, length: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Map shifted indices back into ``[0, length)``: mirrored (reflect) or clamped + a validity mask."""
    valid = (index >= 0) & (index < length)
    if mode == "reflect":
        # reflect as torch.nn.functional.pad: -1 -> 1, length -> length - 2 (edge not repeated)
        index = index.abs()
        index = torch.where(index > length - 1, 2 * (length - 1) - index, index)
        return index.clamp(0, length - 1), torch.ones_like(valid)
    return index.clamp(0, length - 1), valid


def _gather(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[n, c, i, j] = images[n, c, rows[n, i], cols[n, j]]`` as one flat gather per chunk.

    Measured 2x faster on CPU than a row gather followed by a column gather, and 4x faster
    than advanced indexing. The int64 index is ``N x H x W`` (shared by the channels through
    ``expand``), so chunks bound it to 64 MB however large the batch.
    """
    n, c, h, w = images.shape
    flat = images.reshape(n, c, h * w)
    out = torch.empty_like(images)
    step = max(1, (1 << 23) // (h * w))
    for s in range(0, n, step):
        e = min(n, s + step)
        index = (rows[s:e, :, None] * w + cols[s:e, None, :]).view(e - s, 1, h * w).expand(e - s, c, h * w)
        out[s:e] = flat[s:e].gather(2, index).view(e - s, c, h, w)
    return out


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel, as one multiply-add.

    Args:
        images: ``[N x] C x H x W`` uint8 (0..255), or float already on the [0, 1] scale.
        mean: Per-channel mean on the [0, 1] scale; a float32 tensor on ``images``' device
            saves a host-to-device copy per call (which on CUDA waits for the GPU).
        std: Per-channel std on the [0, 1] scale, likewise.
        dtype: Output dtype; the arithmetic is float32 either way (bf16 would round 0..255).
        channels_last: Return a 4-D result in ``channels_last`` memory format (faster convs).

    Returns:
        Normalized float images on the input's device.
    """
    device = images.device
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
    scale = 1 / (s * 255) if images.dtype == torch.uint8 else 1 / s
    x = torch.addcmul(-m / s, images.to(torch.float32), scale)  # x * scale - mean / std
    x = x.to(dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def downscale(images: torch.Tensor, size: int, channels_last: bool = False) -> torch.Tensor:
    """A float ``N x C x H x W`` batch resized to ``size x size`` (antialiased bilinear).

    Antialiasing averages each output pixel over its footprint, as a smaller photograph
    of the same scene would, rather than sampling (and aliasing) the larger one.

    Args:
        images: Normalized float images.
        size: The side wanted; a batch already that size is returned as it is.
        channels_last: Return the result in ``channels_last`` memory format.
    """
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
