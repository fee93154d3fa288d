"""Whitening initialisation of the stem convolution from training patches (``train.whiten_stem``).

airbench's first layer: the filters are the eigenvectors of the covariance of the
(normalized) training images' patches, each scaled by ``1 / sqrt(eigenvalue + eps)``, so
the stem's outputs on those patches are decorrelated with unit variance from the first
step; the network does not spend its first epochs learning that. The leading components
come first (a stem narrower than the patch keeps only those); filters left over take the
negated leading components (a ReLU then keeps both signs, as in airbench), and any beyond
twice the patch size keep their random initialisation. Done in the train layer before the first epoch, since it
needs data: the model builder stays a function of its config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# airbench's: added to every eigenvalue so that the nearly constant directions of the
# patches (eigenvalues near 0) are not blown up into noise.
WHITEN_EPS = 5e-4
# Images whose patches estimate the covariance (airbench uses 5,000): at 32 px and a 3x3
# stem that is 4.5M patches, ample for a 27 x 27 covariance.
WHITEN_IMAGES = 5000
_CHUNK = 500  # images unfolded at a time, so the patches of a chunk stay small


def stem_conv(model: nn.Module) -> nn.Conv2d:
    """The first convolution of ``model`` (the stem of our ResNet).

    Raises:
        ValueError: ``model`` has no ungrouped convolution first.
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or conv.groups != 1:
        raise ValueError("train.whiten_stem needs a model whose first layer is an ungrouped convolution")
    return conv


def patch_covariance(conv: nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    """The covariance (float64, ``d x d``) of ``conv``-sized patches of ``images``, taken with its stride.

    Args:
        conv: Gives the patch size, stride and dilation (no padding: only real pixels).
        images: ``N x C x H x W`` normalized float images.

    Returns:
        The covariance of the flattened patches, in ``conv.weight``'s flattening order.
    """
    d = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    total = torch.zeros(d, d, dtype=torch.float64, device=images.device)
    sums = torch.zeros(d, dtype=torch.float64, device=images.device)
    count = 0
    for chunk in images.split(_CHUNK):
        cols = F.unfold(chunk.float(), conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
        patches = cols.transpose(1, 2).reshape(-1, d).double()
        total += patches.T @ patches
        sums += patches.sum(0)
        count += patches.shape[0]
    mean = sums / count
    return (total - count * torch.outer(mean, mean)) / (count - 1)


@torch.no_grad()
def whiten_stem(model: nn.Module, images: torch.Tensor, *, freeze: bool) -> None:
    """Set ``model``'s stem filters to whiten the patches of ``images`` (see the module docstring).

    Args:
        model: The freshly built model; its first convolution is changed in place.
        images: Normalized float training images, ``N x C x H x W`` (``N > 1``).
        freeze: Also stop the stem's weights from training (``requires_grad=False``).

    Raises:
        ValueError: The model's first layer is not an ungrouped convolution.
    """
    conv = stem_conv(model)
    eigenvalues, eigenvectors = torch.linalg.eigh(patch_covariance(conv, images))
    order = eigenvalues.flip(0).clamp(min=0), eigenvectors.flip(1)  # leading components first
    filters = (order[1] / torch.sqrt(order[0] + WHITEN_EPS)).T  # row i: component i, scaled
    weight = conv.weight.flatten(1).clone()
    d = filters.shape[0]
    n = min(conv.out_channels, d)
    weight[:n] = filters[:n].to(weight.dtype)
    negated = min(conv.out_channels - n, n)
    weight[n : n + negated] = -filters[:negated].to(weight.dtype)
    conv.weight.copy_(weight.view_as(conv.weight))
    if freeze:
        conv.weight.requires_grad_(False)
