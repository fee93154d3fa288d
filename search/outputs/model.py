"""Using a trained model: :func:`load_model` reads a model folder into a :class:`LoadedModel`
that classifies images (``resnet-search predict``).

It needs the folder only (no study, no Ray, no dataset): a folder copied to another machine
loads. Images enter as in training, decoded by the same function as the data cache's
(:func:`search.data.images.read_image`: EXIF orientation, any mode to RGB or grayscale,
fitted to the input size as ``model.json``'s ``input`` records), normalised with the
folder's mean and std, and averaged over the recipe's test-time views where it has any.
A file that is not a regular file, or an image of more pixels than the limit, is refused before its pixels are read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch import nn

from search.config import UserError
from search.config.errors import one_line
from search.config.files import default_pixel_limit
from search.data.images import Undecodable, image_array, read_image
from search.data.layout import IMAGE_SUFFIXES
from search.train.epoch import tta_views
from search.train.model_folder import ModelFolder, build_trained, eval_format, open_model_folder
from search.train.recipe import default_device

if TYPE_CHECKING:
    from PIL import Image

ImageInput = Union[str, Path, "Image.Image", torch.Tensor]
PREDICT_BATCH = 256


@dataclass(frozen=True)
class Prediction:
    """One image's classification: the best class and its probability, and the top ``k``
    (label, probability) pairs, best first. ``source`` names the image (its file, or ``#i``)."""

    source: str
    label: str
    probability: float
    top: tuple[tuple[str, float], ...]

    def line(self) -> str:
        """``file  label probability  [next label probability ...]``, as ``predict`` prints it:
        one line whatever the file's name holds (line breaks and other unprintables escaped)."""
        return one_line("  ".join([self.source, *(f"{label} {p:.4f}" for label, p in self.top)]))

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: the file's name exactly as given (JSON escapes what it must)."""
        return {
            "file": self.source,
            "label": self.label,
            "probability": self.probability,
            "top": [{"label": label, "probability": p} for label, p in self.top],
        }


class LoadedModel:
    """A model folder's network in eval mode, with what using it correctly needs.

    Attributes:
        module: The ``nn.Module`` (eval mode, on ``device``; given, or built from the folder's
            weights); it takes normalised float images ``N x C x H x W`` and returns logits.
        classes: Class names in the order of the logits.
        input_size: Side of the square input.
        in_channels: Colour channels it takes (3: RGB, 1: grayscale).
        fit: How an image file is decoded and fitted to the input, as its training data was.
        mean: Per-channel mean on the [0, 1] scale; ``std`` likewise.
        folder: The model folder read (``folder.info`` is ``model.json``).
    """

    def __init__(
        self, folder: ModelFolder, device: str | torch.device | None = None, module: nn.Module | None = None
    ) -> None:
        self.folder = folder
        self.device = default_device(device)
        self.module: nn.Module = module if module is not None else build_trained(folder, self.device)
        self.trial = folder.trial
        self.format = eval_format(self.trial, self.module, folder, self.device)
        self.classes = folder.classes
        self.input_size = folder.input_size
        self.in_channels = folder.in_channels
        self.fit = folder.info.input.fit
        self.mean, self.std = folder.mean, folder.std

    def __repr__(self) -> str:
        return f"LoadedModel({str(self.folder.path)!r}, {len(self.classes)} classes, {self.input_size}px)"

    # ---- preprocessing

    def preprocess(self, image: ImageInput, name: str = "image", max_pixels: int | None = None) -> torch.Tensor:
        """One image as the uint8 ``C x H x W`` tensor the model's preprocessing starts from.

        Files and PIL images are decoded as training decoded its images
        (:mod:`search.data.images`): EXIF orientation, any mode to RGB (grayscale for a model
        trained on grayscale), fitted to the input size in the training's resize mode.

        Args:
            image: A file path, a PIL image, or a tensor (``C x H x W``, uint8 0..255 or float
                on the [0, 1] scale, already at the input size).
            name: Names the image in errors.
            max_pixels: Refuse a file of more pixels; default :func:`default_pixel_limit`.

        Raises:
            UserError: Not a regular file, over the pixel limit, not a readable image, or a
                tensor of another size.
        """
        if isinstance(image, torch.Tensor):
            return self._check_tensor(image, name)
        if isinstance(image, (str, Path)):
            return self._read_file(Path(image), max_pixels)
        try:
            pixels = image_array(image, self.fit)
        except Undecodable as error:
            raise UserError(f"{name}: {error}") from None
        return self._pixels_tensor(pixels, name)

    def _read_file(self, path: Path, max_pixels: int | None) -> torch.Tensor:
        limit = max_pixels if max_pixels is not None else default_pixel_limit()
        try:
            pixels = read_image(path, self.fit, limit)
        except Undecodable as error:
            raise UserError(f"{path}: {error}") from None
        return self._pixels_tensor(pixels, str(path))

    def _pixels_tensor(self, pixels: np.ndarray, name: str) -> torch.Tensor:
        """Decoded pixels (``H x W x C``) as a ``C x H x W`` tensor, for a model that takes ``C`` channels."""
        if self.in_channels != pixels.shape[-1]:
            raise UserError(
                f"{name}: images are decoded as {self.folder.info.input.pixels} ({pixels.shape[-1]} channels), "
                f"but the model takes {self.in_channels}-channel input: give it tensors"
            )
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()

    def _check_tensor(self, image: torch.Tensor, name: str) -> torch.Tensor:
        expected = (self.in_channels, self.input_size, self.input_size)
        if tuple(image.shape) != expected:
            raise UserError(
                f"{name}: a tensor of shape {tuple(image.shape)}; the model takes {' x '.join(map(str, expected))} "
                "(channels x height x width, uint8 or float on the [0, 1] scale)"
            )
        return image

    # ---- prediction

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a batch (``N x C x H x W``, uint8 or on the [0, 1] scale), averaged over the
        recipe's test-time views, as evaluation computes them."""
        fmt = self.format
        with fmt.autocast():
            views = tta_views(fmt.prepare(batch.to(self.device)), self.trial.train.tta, fmt.channels_last)
            outputs = [self.module(view) for view in views]
            logits = [(out[0] if isinstance(out, tuple) else out).float() for out in outputs]
        return torch.stack(logits).mean(0)

    def predict(self, images: ImageInput | Sequence[ImageInput], top_k: int = 1) -> list[Prediction]:
        """Classify images: file paths, PIL images, or tensors (one image, a batch, or a list).

        Args:
            images: One image or several; a 4-D tensor is a batch.
            top_k: How many (label, probability) pairs each prediction lists.

        Returns:
            One :class:`Prediction` per image, in order.

        Raises:
            UserError: An image cannot be read or does not fit (the first such is named).
        """
        items = _as_list(images)
        names = [str(item) if isinstance(item, (str, Path)) else f"#{i}" for i, item in enumerate(items)]
        tensors = [self.preprocess(item, name) for item, name in zip(items, names)]
        return self._classify(tensors, names, top_k)

    def predict_files(
        self, paths: Iterable[str | Path], top_k: int = 1, max_pixels: int | None = None
    ) -> tuple[list[Prediction], list[str]]:
        """Classify image files; a file that cannot be read or does not fit is reported, and the
        others are still classified.

        Args:
            paths: The files.
            top_k: How many (label, probability) pairs each prediction lists.
            max_pixels: Refuse a file of more pixels; default :func:`default_pixel_limit`.

        Returns:
            The predictions of the good files, in order, and one line per bad file.
        """
        limit = max_pixels if max_pixels is not None else default_pixel_limit()
        tensors, names, errors = [], [], []
        for path in paths:
            try:
                tensors.append(self._read_file(Path(path), limit))
                names.append(str(path))
            except UserError as error:
                errors.append(str(error))
        return self._classify(tensors, names, top_k), errors

    def _classify(self, tensors: list[torch.Tensor], names: list[str], top_k: int) -> list[Prediction]:
        k = max(1, min(top_k, len(self.classes)))
        out: list[Prediction] = []
        for start in range(0, len(tensors), PREDICT_BATCH):
            batch = torch.stack(tensors[start : start + PREDICT_BATCH])
            probabilities = self.logits(batch).softmax(1)
            values, indices = probabilities.topk(k, dim=1)
            for name, row_p, row_i in zip(names[start:], values.tolist(), indices.tolist()):
                top = tuple((self.classes[i], p) for i, p in zip(row_i, row_p))
                out.append(Prediction(name, top[0][0], top[0][1], top))
        return out


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One image, a batch tensor or a sequence, as a list of single images."""
    if isinstance(images, torch.Tensor):
        return list(images.unbind(0)) if images.dim() == 4 else [images]
    if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
        return [images]
    return list(images)


def load_model(path: str | Path, device: str | torch.device | None = None) -> LoadedModel:
    """Load a model folder (what ``train``, ``retrain`` and ``run --keep`` write).

    Args:
        path: The model folder, or an ``.onnx`` file ``export-model`` wrote (run by onnxruntime).
        device: ``cpu``, ``cuda``...; default CUDA when available (the CPU for ONNX).

    Returns:
        The model, ready to ``predict``.

    Raises:
        UserError: Not a model folder, truncated weights, or weights that do not fit its
            config (the first mismatched tensor is named).
    """
    if Path(path).suffix == ".onnx":
        from search.outputs.onnx_model import open_onnx

        folder, module = open_onnx(path, device)
        return LoadedModel(folder, "cpu", module=module)
    return LoadedModel(open_model_folder(path), device)


def image_files(inputs: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """The image files named: files as given, folders searched recursively (sorted by path).

    Returns:
        The files, and one line for each input that does not exist or is a folder without images.
    """
    found: list[Path] = []
    errors: list[str] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            images = sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            found += images
            if not images:
                errors.append(f"{entry}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif entry.exists():
            found.append(entry)
        else:
            errors.append(f"{entry}: no such file or folder")
    return found, errors
