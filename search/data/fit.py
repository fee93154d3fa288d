"""How a decoded image is fitted to the model's input: :class:`ImageFit`, the size, resize mode
and channels that the data cache, its key, and ``predict`` share.

The cache holds images at the fit's output (a square of ``size``, or the images as stored
when ``size`` is unset), so a training batch needs no resizing; the fit is part of the
cache key, so a changed policy never reads a cache built under another one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Union

from search.config import DataConfig

ResizeMode = Literal["shorter_side", "square", "pad"]
DEFAULT_MODE: ResizeMode = "shorter_side"
RGB = 3

# What model.json's input.resize says of each mode: the first is what every folder written
# before the modes existed says, and still means the same.
RESIZE_TEXTS: dict[str, str] = {
    "shorter_side": "shorter side to the input size, then a centre crop (Pillow bicubic, antialiased)",
    "square": "both sides to the input size, the aspect ratio not kept (Pillow bicubic, antialiased)",
    "pad": "longer side to the input size, the aspect ratio kept, centred on black (Pillow bicubic, antialiased)",
}
# model.json's input.pixels for each channel count.
PIXEL_NAMES: dict[int, str] = {3: "RGB", 1: "L"}


@dataclass(frozen=True)
class ImageFit:
    """The side images are fitted to, how, and the channels they are decoded to.

    Attributes:
        size: The square side; ``None`` keeps images as stored (they must then be square and
            of one size).
        mode: ``shorter_side`` (then a centre crop), ``square`` (a plain resize) or ``pad``
            (the longer side to ``size``, centred on black); see :class:`search.config.Resize`.
        channels: 3 (RGB), 1 (grayscale, Pillow's ITU-R 601 luma), or ``None``: as the file
            has it (1 for single-channel modes, else 3), for ``data.channels: auto``.
    """

    size: int | None = None
    mode: ResizeMode = DEFAULT_MODE
    channels: int | None = RGB

    @classmethod
    def of(cls, config: DataConfig) -> ImageFit:
        """The fit a data section asks for."""
        channels = None if config.channels == "auto" else int(config.channels)
        mode: ResizeMode = config.resize.mode if config.resize is not None else DEFAULT_MODE
        return cls(config.image_size, mode, channels)

    @classmethod
    def recorded(cls, size: int, resize: str, pixels: str) -> ImageFit:
        """The fit a model folder records (``input.size``, ``input.resize``, ``input.pixels``)."""
        modes = {text: mode for mode, text in RESIZE_TEXTS.items()}
        channels = {name: count for count, name in PIXEL_NAMES.items()}
        return cls(size, modes[resize], channels[pixels])  # type: ignore[arg-type]

    def cache_key(self) -> Any:
        """What the data cache's key holds of the fit: the size alone for the default fit, so
        caches built before the modes and channels existed are found again."""
        if (self.mode, self.channels) == (DEFAULT_MODE, RGB):
            return self.size
        return [self.size, self.mode, self.channels]


Fitting = Union[ImageFit, int, None]


def as_fit(fitting: Fitting) -> ImageFit:
    """An :class:`ImageFit`; a bare side (or ``None``) is the default fit at that side."""
    return fitting if isinstance(fitting, ImageFit) else ImageFit(fitting)
