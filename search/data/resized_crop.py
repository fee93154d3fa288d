"""Random resized crops of a whole batch on its device: torchvision's ``RandomResizedCrop``
without a per-image Python loop.

Boxes are drawn as :meth:`torchvision.transforms.RandomResizedCrop.get_params` draws them
(10 tries of an area share uniform in ``scale`` and a width / height log-uniform in
``ratio``, the first that fits; else a centre crop clamped to ``ratio``), for every image
at once; then one :func:`torchvision.ops.roi_align` resamples every box to the batch's size
(bilinear, averaging several samples per output pixel where the box is larger than it).
"""

from __future__ import annotations

import math

import torch

from search.config import RandomResizedCrop

TRIES = 10  # as torchvision


def sample_boxes(
    n: int, height: int, width: int, config: RandomResizedCrop, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` crop boxes of an image ``height`` x ``width``, as int64 ``n x 4`` rows of
    ``(top, left, box_height, box_width)``, drawn as torchvision's ``get_params`` draws one.

    Random numbers come from ``generator`` (on its device; the CPU's global RNG if None), all
    drawn up front in a fixed order.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    area = height * width
    low, high = config.scale
    log_low, log_high = math.log(config.ratio[0]), math.log(config.ratio[1])
    draws = torch.rand((2, n, TRIES), generator=generator, device=device, dtype=torch.float64)
    shares = low + (high - low) * draws[0]
    logs = log_low + (log_high - log_low) * draws[1]
    aspect = logs.exp()
    w = (area * shares * aspect).sqrt().round().long()
    h = (area * shares / aspect).sqrt().round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1, keepdim=True)  # the first try that fits (0 where none does)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    fallback_h, fallback_w = _centre_box(height, width, config.ratio)
    found = fits.any(1)
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    place = torch.rand((n, 2), generator=generator, device=device, dtype=torch.float64)
    top = torch.where(found, (place[:, 0] * (height - h + 1)).floor().long(), (height - h) // 2)
    left = torch.where(found, (place[:, 1] * (width - w + 1)).floor().long(), (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def _centre_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback: the whole image, cut to the nearest aspect ratio in ``ratio``."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def random_resized_crop(
    images: torch.Tensor, config: RandomResizedCrop, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each image of ``images`` (``N x C x H x W``, uint8 or float) cropped to its own random
    box and resampled back to ``H x W``; same shape, dtype and device."""
    from torchvision.ops import roi_align

    n, _, height, width = images.shape
    if n == 0:
        return images
    boxes = sample_boxes(n, height, width, config, generator).to(images.device)
    top, left, h, w = boxes.unbind(1)
    index = torch.arange(n, device=images.device)
    # roi_align's boxes are (image, x1, y1, x2, y2) in pixel units; aligned=True puts pixel i at i.
    rois = torch.stack([index, left, top, left + w, top + h], dim=1).to(torch.float32)
    out = roi_align(images.float(), rois, (height, width), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(images.dtype)
