"""A property-based fuzzer (hypothesis) over what ``predict`` is given: the bytes of its files
and their names.

Inputs: random bytes (bare, or behind the magic number of an image format), images of every
mode each of 15 formats can hold (1, L, LA, P, PA, RGB, RGBA, CMYK, I;16, I, F with NaN and
infinities, YCbCr, LAB...) at odd sizes (1 x 64, 64 x 1), with EXIF orientations valid and
not, intact or mutated (truncated, bytes flipped, a slice repeated, bytes inserted), under
random names (line breaks, escapes, unicode). Property, through the CLI in-process
(``search.cli.main``): exit status 0 with one prediction whose probabilities are finite and
sum to 1, or exit status 2 with one line on stderr naming the file; never a traceback, never
longer than ``SECONDS_PER_EXAMPLE`` (an alarm ends a hang); text output one line per image.

The default suite runs ``DEFAULT_EXAMPLES`` (derandomized); ``pytest -m fuzz`` runs
``FUZZ_SLOW_EXAMPLES`` and prints the counts.
"""

from __future__ import annotations

import io
import json
import math
import signal
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny_model import train_tiny_model

from search.cli import main
from search.config.errors import one_line

DEFAULT_EXAMPLES = 150
FUZZ_SLOW_EXAMPLES = 5_000
SECONDS_PER_EXAMPLE = 5.0  # generous: the machine is shared; a hang is minutes
EXIF_ORIENTATION = 0x0112

FORMATS = [
    "PNG",
    "JPEG",
    "GIF",
    "BMP",
    "TIFF",
    "WEBP",
    "ICO",
    "PPM",
    "TGA",
    "PCX",
    "SGI",
    "DDS",
    "QOI",
    "JPEG2000",
    "IM",
]
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr", "LAB", "HSV", "RGBX"]
MAGIC = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xe1",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"\x00\x00\x01\x00",
    b"P6\n",
    b"\x01\xda",
    b"DDS ",
    b"qoif",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",
]


def _round_trips(fmt: str, mode: str) -> bool:
    try:
        buffer = io.BytesIO()
        Image.new(mode, (4, 4)).save(buffer, fmt)
        with Image.open(io.BytesIO(buffer.getvalue())) as image:
            image.load()
    except Exception:
        return False
    return True


# What this Pillow can write and read back, so that every drawn (format, mode) makes a file.
WRITABLE = [(fmt, mode) for fmt in FORMATS for mode in MODES if _round_trips(fmt, mode)]


def pixels(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """A random image of ``mode``; the wide modes get their extremes (and NaN, infinities for F)."""
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        info = np.finfo(dtype) if mode == "F" else np.iinfo(dtype)
        values = rng.choice(np.array([0, 1, info.max, info.min, 255, 65535], dtype=np.float64), size=(height, width))
        if mode == "F":
            values[rng.random((height, width)) < 0.2] = rng.choice([np.nan, np.inf, -np.inf])
        return Image.fromarray(values.astype(dtype))  # uint16: I;16, int32: I, float32: F
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return rgb.convert(mode) if mode not in ("PA", "LA") else rgb.convert(mode[0]).convert(mode)


@st.composite
def encoded_images(draw: st.DrawFn) -> bytes:
    """An image of a drawn format, mode and size, maybe with an EXIF orientation, maybe mutated."""
    fmt, mode = draw(st.sampled_from(WRITABLE))
    width, height = draw(st.sampled_from([(1, 1), (1, 64), (64, 1), (7, 5), (32, 32), (33, 17)]))
    image = pixels(mode, width, height, draw(st.integers(0, 2**16)))
    buffer = io.BytesIO()
    orientation = draw(st.sampled_from([None, 1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 65535]))
    try:
        if orientation is not None and fmt in ("JPEG", "PNG", "TIFF", "WEBP"):
            exif = image.getexif()
            exif[EXIF_ORIENTATION] = orientation
            image.save(buffer, fmt, exif=exif)
        else:
            image.save(buffer, fmt)
    except Exception:  # this size or this EXIF in this format: fall back to the plain 4 x 4 that round-trips
        buffer = io.BytesIO()
        Image.new(mode, (4, 4)).save(buffer, fmt)
    return mutate(draw, buffer.getvalue())


def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["none", "none", "truncate", "flip", "repeat", "insert"]))
    if kind == "none" or not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        out = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            out[position] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "repeat":
        end = draw(st.integers(at, min(len(data), at + 256)))
        return data[:end] + data[at:end] + data[end:]
    return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]


contents = st.one_of(
    st.binary(max_size=2048),
    st.tuples(st.sampled_from(MAGIC), st.binary(max_size=1024)).map(lambda parts: parts[0] + parts[1]),
    encoded_images(),
    encoded_images(),
    encoded_images(),
)
names = st.one_of(
    st.sampled_from(["image.png", "photo.jpg", "a\nb.png", "\x1b[31mred.png", "tab\there", " lead", "x.tiff"]),
    st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]), min_size=1, max_size=30),
).filter(lambda name: name not in (".", "..") and len(name.encode()) <= 200)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_imagefolder: Path, _session_data_cache: Path) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("fuzz_predict"), tiny_imagefolder, _session_data_cache)


class Hung(Exception):
    pass


@contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """A hang becomes a failure (:class:`Hung`) after ``seconds`` instead of stalling the suite."""

    def hung(signum: int, frame: object) -> None:
        raise Hung(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_predict(model_dir: Path, path: Path, as_json: bool, max_pixels: int | None, capsys) -> str:
    """The property for one file; returns ``predicted`` or ``refused``."""
    args = ["predict", str(model_dir), str(path), "--top-k", "3", "--device", "cpu"]
    args += ["--json"] * as_json + (["--max-pixels", str(max_pixels)] if max_pixels else [])
    start = time.monotonic()
    with alarm(6 * SECONDS_PER_EXAMPLE), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        code = main(args)
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert not warned, [str(w.message) for w in warned]  # in the CLI, each would be a line of its own on stderr
    assert elapsed < SECONDS_PER_EXAMPLE, f"{elapsed:.1f} s for {path.read_bytes()[:64]!r}"
    assert code in (0, 2) and "Traceback" not in err, (code, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith(f"resnet-search: error: {one_line(str(path))}: "), err
        return "refused"
    assert err == ""
    if as_json:
        (prediction,) = json.loads(out)["predictions"]
        assert prediction["file"] == str(path)
        probabilities = [t["probability"] for t in prediction["top"]]
    else:
        assert out.count("\n") == 1 and out.startswith(one_line(str(path)) + "  "), out
        probabilities = [float(pair.split(" ")[-1]) for pair in out.strip().split("  ")[-3:]]
    assert all(math.isfinite(p) and 0 <= p <= 1 for p in probabilities), out
    assert math.isclose(sum(probabilities), 1.0, abs_tol=1e-3), out  # three classes, top 3
    return "predicted"


def run_predict_fuzz(examples: int, model_dir: Path, tmp_path: Path, capsys) -> dict[str, int]:
    seen = {"predicted": 0, "refused": 0}
    folder = tmp_path / "inputs"
    folder.mkdir()
    main(["predict", str(model_dir), str(model_dir / "model.json"), "--device", "cpu"])  # imports, untimed
    capsys.readouterr()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=examples == DEFAULT_EXAMPLES,  # the default suite sees the same examples every run
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
        database=None,
    )
    @given(
        data=contents,
        name=names,
        as_json=st.booleans(),
        max_pixels=st.sampled_from([None, None, None, 1, 64, 4096]),
    )
    def one(data: bytes, name: str, as_json: bool, max_pixels: int | None) -> None:
        for old in folder.iterdir():
            old.unlink()
        path = folder / name
        path.write_bytes(data)
        seen[check_predict(model_dir, path, as_json, max_pixels, capsys)] += 1

    one()
    return seen


def test_fuzzed_images_are_predicted_or_one_line_exit_2(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    seen = run_predict_fuzz(DEFAULT_EXAMPLES, model_dir, tmp_path, capsys)
    assert seen["predicted"] > 30 and seen["refused"] > 30, seen  # both sides of the property were exercised


@pytest.mark.slow
@pytest.mark.fuzz
def test_fuzzed_images_many(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    start = time.monotonic()
    seen = run_predict_fuzz(FUZZ_SLOW_EXAMPLES, model_dir, tmp_path, capsys)
    with capsys.disabled():
        print(f"\npredict fuzz: {sum(seen.values())} cases, {seen}, failures: 0, {time.monotonic() - start:.0f} s")
