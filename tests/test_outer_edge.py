"""Trust at the outer edge: the images ``predict`` is given and the files the commands write.

Images: ``predict`` decodes through the function training uses (EXIF orientation, every mode
to RGB), refuses what is not a regular file before opening it, refuses an image over the
pixel limit from its header, and prints every file name as one line. Outputs: ``--out`` of
``export-model``, ``evaluate`` and ``report`` is checked before the work, and written whole
or not at all. Every behaviour is driven through the real CLI (a subprocess) on a model
folder that ``resnet-search train`` made.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image
from tiny_model import cli, train_tiny_model

from search.data.decode import decode_images, to_nchw
from search.outputs.model import load_model

EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_imagefolder: Path, _session_data_cache: Path) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("edge"), tiny_imagefolder, _session_data_cache)


def one_error_line(result) -> str:
    """The one line a refused input gets, after checking exit status 2 and no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def predicted(result) -> dict[str, list[float]]:
    """``predict --json --top-k 3``'s probabilities by file, in class order (alphabetical)."""
    out = {}
    for p in json.loads(result.stdout)["predictions"]:
        by_label = {t["label"]: t["probability"] for t in p["top"]}
        out[p["file"]] = [by_label[label] for label in sorted(by_label)]
    return out


# --------------------------------------------------------------------------- one decoding path


def not_symmetric(rng: np.random.Generator) -> Image.Image:
    """A 32 x 64 (portrait) picture of red, green and blue regions: no rotation or flip maps it onto itself."""
    pixels = np.zeros((64, 32, 3))
    pixels[:32], pixels[32:], pixels[16:48, :16] = (220, 40, 40), (40, 200, 60), (50, 70, 230)
    return Image.fromarray(np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8))


def test_an_exif_rotated_jpeg_is_predicted_as_the_upright_picture(model_dir: Path, tmp_path: Path) -> None:
    upright = not_symmetric(np.random.default_rng(0))
    upright.save(tmp_path / "upright.jpg", quality=100, subsampling=0)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone stores it: sideways
    exif = stored.getexif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to show": the upright picture
    stored.save(tmp_path / "phone.jpg", quality=100, subsampling=0, exif=exif)
    stored.save(tmp_path / "sideways.jpg", quality=100, subsampling=0)  # the same pixels, no tag

    files = ["upright.jpg", "phone.jpg", "sideways.jpg"]
    result = cli(["predict", str(model_dir), *files, "--json", "--top-k", "3", "--device", "cpu"], tmp_path)
    assert result.returncode == 0, result.stderr
    p = predicted(result)
    as_upright = max(abs(a - b) for a, b in zip(p["phone.jpg"], p["upright.jpg"]))
    as_stored = max(abs(a - b) for a, b in zip(p["sideways.jpg"], p["upright.jpg"]))
    # JPEG rounds the rotated and the upright pixels apart by a few levels; ignoring the tag
    # (what predict did) classifies the sideways picture, which the model sees differently.
    assert as_upright < 1e-3 and as_stored > 5 * as_upright, (as_upright, as_stored)


def awkward_images(folder: Path) -> list[Path]:
    """16-bit grayscale, palette with transparency, grayscale, grayscale with alpha, CMYK, RGBA."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 1, 24 * 24).reshape(24, 24)
    images = {
        "gray16.png": Image.fromarray((ramp * 60000).astype(np.uint16)),
        "palette.png": Image.new("RGB", (24, 24), (200, 30, 30)).convert("P"),
        "gray.png": Image.fromarray((ramp * 255).astype(np.uint8), mode="L"),
        "gray_alpha.png": Image.new("LA", (24, 24), (120, 60)),
        "cmyk.jpg": Image.new("RGB", (24, 40), (30, 60, 200)).convert("CMYK"),
        "rgba.png": Image.new("RGBA", (40, 24), (30, 200, 60, 10)),
    }
    for name, image in images.items():
        image.save(folder / name, **({"transparency": 0} if name == "palette.png" else {}))
    return [folder / name for name in images]


def test_predict_decodes_every_mode_as_training_does(model_dir: Path, tmp_path: Path) -> None:
    files = awkward_images(tmp_path / "awkward")
    model = load_model(model_dir, "cpu")
    as_trained = decode_images(files, model.input_size)  # the data cache's path
    assert as_trained.kept == list(range(len(files)))
    expected = model.predict(to_nchw(as_trained.images), top_k=3)

    result = cli(["predict", str(model_dir), *map(str, files), "--json", "--top-k", "3"], tmp_path)
    assert result.returncode == 0, result.stderr  # grayscale too: training takes it, so predict does
    p = predicted(result)
    for file, want in zip(files, expected):
        want_by_label = dict(want.top)
        assert p[str(file)] == pytest.approx([want_by_label[c] for c in sorted(want_by_label)], abs=1e-5)


# --------------------------------------------------------------------------- what is not an image file


def test_a_fifo_and_a_device_are_refused_at_once_and_the_others_predicted(model_dir: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "images.fifo"
    os.mkfifo(fifo)
    good = model_dir.parent / "data" / "test" / "red" / "0000.png"
    result = cli(["predict", str(model_dir), str(fifo), "/dev/zero", str(good)], tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stdout.split()[0] == str(good)
    assert result.stderr.splitlines() == [
        f"resnet-search: error: {fifo}: a FIFO, not a regular file",
        "resnet-search: error: /dev/zero: a character device, not a regular file",
    ]
    model = load_model(model_dir, "cpu")
    start = time.monotonic()
    predictions, errors = model.predict_files([fifo, Path("/dev/zero")])
    assert time.monotonic() - start < 1.0 and not predictions and len(errors) == 2


def test_a_name_with_a_line_break_prints_as_one_line_and_json_keeps_it_exact(model_dir: Path, tmp_path: Path) -> None:
    good = model_dir.parent / "data" / "test" / "blue" / "0000.png"
    name = "forged\nblue.png  red 1.0000\x1b[2J.png"
    (tmp_path / name).write_bytes(good.read_bytes())
    (tmp_path / "broken\n.png").write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")

    text = cli(["predict", str(model_dir), name, "broken\n.png"], tmp_path)
    assert text.returncode == 2
    assert text.stdout.count("\n") == 1 and text.stdout.startswith("forged\\nblue.png  red 1.0000\\x1b[2J.png  ")
    assert text.stderr.count("\n") == 1 and text.stderr.startswith(
        "resnet-search: error: broken\\n.png: not a readable"
    )

    as_json = cli(["predict", str(model_dir), name, "broken\n.png", "--json"], tmp_path)
    document = json.loads(as_json.stdout)
    assert [p["file"] for p in document["predictions"]] == [name]
    assert document["errors"][0].startswith("broken\n.png: not a readable image")


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("L", (13_000, 13_000)).save(tmp_path / "huge.png")  # 169 megapixels
    assert (tmp_path / "huge.png").stat().st_size < 1_000_000
    small = model_dir.parent / "data" / "test" / "red" / "0000.png"  # 32 x 32

    line = one_error_line(cli(["predict", str(model_dir), "huge.png"], tmp_path))
    assert line == (
        "resnet-search: error: huge.png: 13000x13000 is 169,000,000 pixels, over the limit of 100,000,000 "
        "(raise it with --max-pixels or RESNET_SEARCH_MAX_PIXELS)"
    )
    assert "over the limit of 1,000" in one_error_line(
        cli(["predict", str(model_dir), str(small), "--max-pixels", "1000"], tmp_path)
    )
    assert cli(["predict", str(model_dir), str(small), "--max-pixels", "1024"], tmp_path).returncode == 0
    refused = cli(["predict", str(model_dir), str(small)], tmp_path, {"RESNET_SEARCH_MAX_PIXELS": "1000"})
    assert "over the limit of 1,000" in one_error_line(refused)
    bad = one_error_line(cli(["predict", str(model_dir), str(small)], tmp_path, {"RESNET_SEARCH_MAX_PIXELS": "lots"}))
    assert bad.endswith("RESNET_SEARCH_MAX_PIXELS: must be a whole number of pixels >= 1, like 100000000, got 'lots'")

    # Training's decoding skips it, by the same rule.
    monkeypatch.setenv("RESNET_SEARCH_MAX_PIXELS", "1000")
    assert decode_images([small], None).skipped[0][1].startswith("32x32 is 1,024 pixels, over the limit of 1,000")


# --------------------------------------------------------------------------- where the output goes


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A study with two complete trials, enough for a report."""
    url = f"sqlite:///{tmp_path_factory.mktemp('study') / 'plain.db'}"
    study = optuna.create_study(study_name="plain", storage=url, direction="maximize")
    lr = optuna.distributions.FloatDistribution(0.001, 1.0)
    for value in (0.5, 0.7):
        study.add_trial(optuna.trial.create_trial(params={"lr": value / 10}, distributions={"lr": lr}, value=value))
    return url


Command = Callable[[Path, str, str], list[str]]
COMMANDS: dict[str, Command] = {
    "export-model": lambda model, storage, out: ["export-model", str(model), "--format", "torchscript", "--out", out],
    "evaluate": lambda model, storage, out: ["evaluate", str(model), "--out", out],
    "report": lambda model, storage, out: ["report", "--storage", storage, "--out", out],
}
BAD_OUT: dict[str, tuple[str, str]] = {  # case -> (--out, a folder, and what the line says)
    "a full device": ("/dev/full", "--out /dev/full: a character device, not a folder; name a folder to write into"),
    "under a file": ("a_file/out", "--out a_file/out: a_file is a regular file, not a folder"),
    "empty": ("", "--out '': an empty path; name the folder to write"),
    "a file": ("a_file", "--out a_file: a regular file, not a folder; name a folder to write into"),
}


def listing(*folders: Path) -> set[tuple[str, int]]:
    return {(str(p), p.stat().st_size) for folder in folders for p in folder.rglob("*")}


@pytest.mark.parametrize(
    ("command", "case"),
    [(command, case) for command in COMMANDS for case in BAD_OUT],
)
def test_a_bad_out_is_one_line_before_the_work_and_leaves_nothing(
    command: str, case: str, model_dir: Path, storage: str, tmp_path: Path
) -> None:
    (tmp_path / "a_file").write_text("a file\n")
    (tmp_path / "a_folder").mkdir()
    out, expected = BAD_OUT[case]
    before = listing(tmp_path, model_dir)
    line = one_error_line(cli(COMMANDS[command](model_dir, storage, out), tmp_path))
    assert line == f"resnet-search: error: {expected}"
    assert listing(tmp_path, model_dir) == before
    assert Path("/dev/full").is_char_device()


FOLDER_COMMANDS: dict[str, Callable[[str, str], list[str]]] = {
    "train": lambda storage, out: ["train", "fixed.yaml", "--out", out],
    "export": lambda storage, out: ["export", "--storage", storage, "--out", out],
    "retrain": lambda storage, out: ["retrain", "--storage", storage, "--top", "1", "--out", out],
}
BAD_FOLDER: dict[str, tuple[str, str]] = {  # command -> (--out, what the line says)
    "train": ("a_file/runs", "--out a_file/runs: a_file is a regular file, not a folder"),
    "export": ("a_file", "--out a_file: a regular file, not a folder; name a folder to write into"),
    "retrain": ("", "--out '': an empty path; name the folder to write"),
}


@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_a_bad_out_folder_is_one_line_before_the_work(
    command: str, model_dir: Path, storage: str, tmp_path: Path
) -> None:
    (tmp_path / "a_file").write_text("a file\n")
    (tmp_path / "fixed.yaml").write_text((model_dir.parent / "fixed.yaml").read_text())
    out, expected = BAD_FOLDER[command]
    before = listing(tmp_path)
    assert one_error_line(cli(FOLDER_COMMANDS[command](storage, out), tmp_path)) == f"resnet-search: error: {expected}"
    assert listing(tmp_path) == before


def fill_disk_at(size: int) -> Callable[[], None]:
    """A child process whose files cannot grow past ``size`` bytes: every write beyond fails as
    on a full disk (EFBIG, "File too large"; SIGXFSZ ignored so that the write returns the error)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


@pytest.mark.parametrize(
    ("command", "name", "room"),
    [
        ("export-model", "model.pt", 10_000),
        ("evaluate", "evaluation_test.json", 100),
        ("report", "report.html", 100_000),
    ],
)
def test_a_full_disk_is_one_line_and_keeps_the_old_file_whole(
    command: str, name: str, room: int, model_dir: Path, storage: str, tmp_path: Path
) -> None:
    target = tmp_path / "out" / name
    target.parent.mkdir()
    target.write_text("the previous, whole file\n")
    result = cli(COMMANDS[command](model_dir, storage, str(target.parent)), tmp_path, preexec_fn=fill_disk_at(room))
    assert "cannot write (File too large)" in one_error_line(result)
    assert [p.name for p in target.parent.iterdir()] == [name]  # no temporary, no plotly.min.js
    assert target.read_text() == "the previous, whole file\n"


@pytest.mark.slow  # two ONNX exports: about 30 s
def test_onnx_export_is_one_file_written_whole_or_not_at_all(model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.onnx"
    args = ["export-model", str(model_dir), "--format", "onnx", "--out", str(target.parent)]
    assert "cannot write (File too large)" in one_error_line(cli(args, tmp_path, preexec_fn=fill_disk_at(10_000)))
    assert not target.parent.exists() or not list(target.parent.iterdir())
    result = cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]  # the weights inside, no .onnx.data
    import onnxruntime

    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    inputs = torch.randn(3, 3, 32, 32)
    (logits,) = session.run(["logits"], {"images": inputs.numpy()})
    with torch.inference_mode():
        eager = load_model(model_dir, "cpu").module(inputs.contiguous(memory_format=torch.channels_last)).float()
    assert np.abs(logits - eager.numpy()).max() < 1e-4


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_one_line_before_the_work(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    line = one_error_line(cli(COMMANDS["export-model"](model_dir, "", str(folder / "m.pt")), tmp_path))
    assert line.endswith(f"{folder} cannot be written (permissions or a read-only file system)")
    assert not list(folder.iterdir())
