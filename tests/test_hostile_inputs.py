"""Hostile input, round 2, through the real CLI (``search.cli.main`` in-process, so that the
table stays fast): every case is exit status 2 and one line naming the file (or flag) and
the key path, never a traceback, never a hang, and nothing written outside ``tmp_path``.

The families are those of docs/reliability.md: paths out of ``studies/``, secrets in storage
URLs, values the schema let through, files that are not specs, corrupt state, the data
cache, images, and two answers to one question. Signals and faults during a run are in
``test_hostile_faults.py`` (slow); the fuzzer is ``test_fuzz_specs.py``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import TINY_CLASSES, write_class_images
from PIL import Image

from search.cli import main
from search.config import DataConfig, UserError, files, load_spec
from search.config.secrets import mask_secrets
from search.data import load_dataset
from search.data.decode import decode_images
from search.engine.checks import trial_image_size
from search.engine.samplers import create_study
from search.study.keys import DRIVER, SPEC_TEXT
from search.study.lease import DriverLease
from search.study.trials import load_study, study_spec

FIXED = """\
study: {name: hostile}
data: {dataset: cifar10}
model: {num_classes: 10, stem: {width: 8}, stages: [{blocks: 1, width: 8}, {blocks: 1, width: 16}]}
train: {epochs: 1, batch_size: 8}
"""
SECRET = "hunter2-Secret-Pw"
NOT_ERRORS = ("resnet-search: warning", "resnet-search: decoding", "resnet-search: extracting")


def cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``resnet-search ARGS`` in this process: exit status, stdout, stderr."""
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's usage errors
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def refused(args: list[str], capsys: pytest.CaptureFixture, expected: str) -> str:
    """The command must fail with exit status 2 and one error line holding ``expected``."""
    start = time.monotonic()
    code, out, err = cli(args, capsys)
    elapsed = time.monotonic() - start
    lines = [line for line in err.splitlines() if not line.startswith(NOT_ERRORS)]
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("resnet-search") and ": error: " in lines[0], err
    assert "Traceback" not in err and expected in lines[0], lines[0]
    assert elapsed < 20, f"took {elapsed:.1f} s"
    return lines[0]


def spec_file(tmp: Path, edit: tuple[str, str] | None = None, text: str = FIXED) -> Path:
    if edit is not None:
        assert edit[0] in text, edit
        text = text.replace(*edit)
    path = tmp / "hostile.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- specs: one table

# case -> (the edit of FIXED, the key path named, what the message says)
SPEC_CASES: dict[str, tuple[tuple[str, str], str, str]] = {
    "a study name that climbs out": (("name: hostile", "name: ../../x"), "study.name", "cannot name a study's file"),
    "an absolute study name": (("name: hostile", "name: /tmp/x"), "study.name", "cannot name a study's file"),
    "an empty study name": (("name: hostile", "name: ''"), "study.name", "cannot name a study's file"),
    "Adam betas of 1 or more": (
        ("batch_size: 8}", "batch_size: 8, optimizer: {name: adam, betas: [0.9, 1.0]}}"),
        "train.optimizer.betas[1]",
        "must be < 1.0",
    ),
    "AdamW betas below 0": (
        ("batch_size: 8}", "batch_size: 8, optimizer: {name: adamw, betas: [-0.1, 0.9]}}"),
        "train.optimizer.betas[0]",
        "must be >= 0.0",
    ),
    "a negative hidden size in the head": (
        ("stem: {width: 8}", "head: {hidden: [64, -5]}, stem: {width: 8}"),
        "model.head.hidden[1]",
        "must be >= 1",
    ),
    "a pooling kernel larger than the feature map": (
        ("stem: {width: 8}", "pool_kernel: 64, stem: {width: 8}"),
        "model.pool_kernel",
        "larger than the last feature map (16x16 for 32x32 input)",
    ),
    "a stem kernel that would take forever": (
        ("stem: {width: 8}", "stem: {width: 8, kernel: 1001}"),
        "model.stem.kernel",
        "must be <= 11",
    ),
    "a stem kernel larger than the image": (
        (
            "cifar10}\nmodel: {num_classes: 10, stem: {width: 8}",
            "cifar10, image_size: 8}\nmodel: {num_classes: 10, stem: {width: 8, kernel: 11}",
        ),
        "model.stem.kernel",
        "11 is larger than the 8x8 input",
    ),
    "grayscale input channels for RGB images": (
        ("stem: {width: 8}", "in_channels: 1, stem: {width: 8}"),
        "model.in_channels",
        "must be 3",
    ),
    "a zero std (division by zero)": (
        ("dataset: cifar10}", "dataset: cifar10, std: [0.2, 0.0, 0.2]}"),
        "data.std[1]",
        "must be > 0.0",
    ),
    "a hundred billion blocks": (
        ("blocks: 1, width: 8", "blocks: 100000000000, width: 8"),
        "model.stages[0].blocks",
        "must be <= 100",
    ),
    "a seed numpy cannot take": (("batch_size: 8}", "batch_size: 8, seed: 1099511627776}"), "train.seed", "must be <="),
    "a test-time shift as large as the image": (
        ("batch_size: 8}", "batch_size: 8, tta: {translate: 32}}"),
        "train.tta.translate",
        "32 must be smaller than the 32px image",
    ),
    "a key given twice": (
        ("train: {epochs: 1", "train: {epochs: 1}\ntrain: {epochs: 2"),
        "train",
        "duplicate key 'train' (lines 4 and 5)",
    ),
    "a key given twice deep down": (
        ("stem: {width: 8}", "stem: {width: 8, width: 16}"),
        "model.stem.width",
        "duplicate key 'width' (lines 3 and 3)",
    ),
    "an integer of 5,000 digits": (("epochs: 1", "epochs: " + "9" * 5000), "", "a value cannot be read"),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_a_hostile_spec_is_one_line_naming_the_file_and_key(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    edit, key, message = SPEC_CASES[case]
    path = spec_file(tmp_path, edit)
    line = refused(["count", str(path)], capsys, message)
    assert f"{path}: {key}:" in line if key else f"{path}: " in line
    assert not (tmp_path.parent / "x.db").exists() and not Path("/tmp/x.db").exists()


def test_a_space_whose_every_sample_misfits_its_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    space = FIXED.replace("stem: {width: 8}", "pool_kernel: {choice: [20, 40]}, stem: {width: 8}")
    line = refused(["count", str(spec_file(tmp_path, text=space))], capsys, "no sampled config fits 32x32 input")
    assert "model.pool_kernel" in line


# --------------------------------------------------------------------------- files that are not specs


def alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "model:\n  head:\n    " + "\n    ".join(lines) + f"\n    hidden: *a{levels - 1}\n"


FILE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "a binary file": (lambda p: _write(p, bytes(range(256)) * 40), "is not a UTF-8 text file"),
    "a 3,000-level nesting": (lambda p: _write(p, b"model: " + b"[" * 3000 + b"]" * 3000), "invalid YAML"),
    "a 40-level nesting": (lambda p: _write(p, ("model: " + "[" * 40 + "]" * 40).encode()), "nests deeper than 32"),
    "an alias bomb in a known key": (lambda p: _write(p, alias_bomb().encode()), "expands to more than 100,000"),
    "a huge file": (lambda p: _write(p, b"# " + b"x" * (2 * 2**20) + b"\n"), "a spec is at most 1,048,576 bytes"),
    "two documents": (lambda p: _write(p, b"study: {name: a}\n---\nstudy: {name: b}\n"), "invalid YAML"),
    "a folder": (lambda p: p.mkdir() or p, "cannot be read"),
    "a missing file": (lambda p: p, "no such file"),
    "a list, not a mapping": (lambda p: _write(p, b"- study\n- model\n"), "must be a mapping of sections"),
    "a date where a number goes": (lambda p: _write(p, b"train: {epochs: 2001-02-30}\n"), "a value cannot be read"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_a_file_that_is_not_a_spec_is_one_line_within_a_second(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make, expected = FILE_CASES[case]
    path = make(tmp_path / "not_a_spec.yaml")
    start = time.monotonic()
    line = refused(["count", str(path)], capsys, expected)
    assert time.monotonic() - start < 1.0 and str(path) in line


def test_the_alias_bomb_names_the_key_path_where_it_blows_up(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = refused(["count", str(_write(tmp_path / "bomb.yaml", alias_bomb().encode()))], capsys, "YAML aliases")
    assert "model.head.a" in line


# --------------------------------------------------------------------------- flags: one table, every command


def study_db(tmp: Path, name: str = "there") -> str:
    """A storage holding one finished trial of a study ``name``, as ``sqlite:///`` URL."""
    url = f"sqlite:///{tmp / 'studies' / name}.db"
    (tmp / "studies").mkdir(exist_ok=True)
    study = optuna.create_study(study_name=name, storage=url)
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    return url


ARG_CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "count --samples 0": (lambda t: ["count", str(spec_file(t)), "--samples", "0"], "--samples: must be a whole"),
    "count --samples 10**7": (lambda t: ["count", str(spec_file(t)), "--samples", "10000000"], "<= 1,000,000"),
    "train --epochs 0": (lambda t: ["train", str(spec_file(t)), "--epochs", "0"], "--epochs: must be a whole"),
    "train --seeds ''": (lambda t: ["train", str(spec_file(t)), "--seeds", ""], "--seeds: must be comma-separated"),
    "train --seeds 1,,2": (lambda t: ["train", str(spec_file(t)), "--seeds", "1,,2"], "--seeds: must be comma"),
    "train --seeds 2**40": (lambda t: ["train", str(spec_file(t)), "--seeds", str(2**40)], "from 0 to 4294967295"),
    "retrain --top 0": (lambda t: ["retrain", "--top", "0"], "--top: must be a whole number >= 1"),
    "export --top 0": (lambda t: ["export", "--top", "0"], "--top: must be a whole number >= 1"),
    "dashboard --port 70000": (lambda t: ["dashboard", "--port", "70000"], "--port: must be a TCP port from 0"),
    "dashboard --port -1": (lambda t: ["dashboard", "--port", "-1"], "--port: must be a TCP port"),
    "dashboard --port http": (lambda t: ["dashboard", "--port", "http"], "--port: must be a TCP port"),
    "export --study ../x": (lambda t: ["export", "--study", "../x"], "study name '../x' cannot name"),
    "report --study /etc/passwd": (lambda t: ["report", "--study", "/etc/passwd"], "cannot name a study's file"),
    "an unknown study": (lambda t: ["export", "--storage", study_db(t), "--study", "nope"], "no study 'nope'"),
    "an empty storage": (lambda t: ["export", "--storage", empty_db(t)], "holds 0 studies"),
    "a missing storage file": (lambda t: ["report", "--storage", "sqlite:///missing.db"], "no such database file"),
    "an unknown scheme": (lambda t: ["studies", "--storage", f"redis://u:{SECRET}@h/0"], "unknown scheme 'redis'"),
    "no storage anywhere": (lambda t: ["export"], "pass --storage URL"),
    "an unknown command": (lambda t: ["serve"], "invalid choice: 'serve'"),
    "a missing spec": (lambda t: ["run", str(t / "missing.yaml"), "--dry-run"], "no such file"),
}


def empty_db(tmp: Path) -> str:
    url = f"sqlite:///{tmp / 'empty.db'}"
    optuna.storages.RDBStorage(url)  # Optuna's tables, no study
    return url


@pytest.mark.parametrize("case", list(ARG_CASES))
def test_a_bad_flag_is_one_line_and_exit_2(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    make, expected = ARG_CASES[case]
    line = refused(make(tmp_path), capsys, expected)
    assert SECRET not in line


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://user:{SECRET}@db.example/search",
        f"postgresql://user@db.example/search?password={SECRET}",
        f"postgresql://user@db.example/search?sslmode=require&sslpassword={SECRET}",
        f"mysql://user@db.example/search?passwd={SECRET}&charset=utf8",
        f"mysql://user@db.example/search?PWD={SECRET}",
        f"postgresql://user@db.example/search?pass%77ord={SECRET}",  # a percent-encoded name
        f"postgresql://user:{SECRET[:6]}@{SECRET[6:]}@db.example/search",  # a raw @ in the password
        f"connection failed: host=db.example user=u password={SECRET} dbname=search",  # libpq's key=value form
        f"postgresql://user@db.example/search?token={SECRET}",
    ],
)
def test_every_form_of_a_storage_secret_is_masked(url: str) -> None:
    masked = mask_secrets(url)
    assert SECRET not in masked and SECRET[:6] not in masked and "***" in masked
    assert "db.example" in masked  # the rest stays readable


def test_a_query_string_password_is_masked_where_the_cli_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = f"postgresql://user@127.0.0.1:1/search?password={SECRET}"  # nothing listens on port 1
    for command in (["studies", "--storage", url], ["export", "--storage", url], ["report", "--storage", url]):
        line = refused(command, capsys, "cannot connect")
        assert "password=***" in line and SECRET not in line


# --------------------------------------------------------------------------- corrupt state


def corrupt_pages(db: Path) -> None:
    """Overwrite every page after the first two with garbage, as a failing disk would."""
    data = bytearray(db.read_bytes())
    rng = np.random.default_rng(0)
    size = int.from_bytes(data[16:18], "big")
    page = 65536 if size == 1 else size
    for start in range(2 * page, len(data), page):
        data[start + 8 : start + page] = rng.integers(0, 256, page - 8, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["corrupted pages", "not a database at all"])
@pytest.mark.parametrize("command", ["studies", "export", "report"])
def test_a_corrupt_sqlite_file_is_one_line_naming_it_and_what_to_do(
    damage: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    url = study_db(tmp_path)
    study = optuna.load_study(study_name="there", storage=url)
    for i in range(40):  # enough rows for several pages
        study.add_trial(optuna.trial.create_trial(value=float(i), params={}, distributions={}))
    db = tmp_path / "studies" / "there.db"
    if damage == "corrupted pages":
        corrupt_pages(db)
    else:
        db.write_bytes(bytes(range(256)) * 64)
    line = refused([command, "--storage", url], capsys, "is damaged")
    assert str(db) in line and "restore it from a backup" in line


KILLED_MID_WRITE = """
import os, sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
connection.execute("PRAGMA cache_size = 1")  # spill to the file, so the journal must be synced: hot
connection.execute("BEGIN")
connection.execute("CREATE TABLE half_written (x BLOB)")
for _ in range(100):
    connection.execute("INSERT INTO half_written VALUES (?)", (os.urandom(4000),))
os._exit(9)  # as SIGKILL would: no rollback, no close
"""


@pytest.mark.parametrize("command", ["studies", "report"])
def test_a_database_left_mid_write_by_a_killed_driver_is_rolled_back_not_called_damaged(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """SIGKILL mid-transaction leaves a hot journal; the next open must roll it back as SQLite
    does, so the finished trials are all there and the rerun goes on."""
    monkeypatch.chdir(tmp_path)
    url = study_db(tmp_path)
    db = tmp_path / "studies" / "there.db"
    subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(db)], check=False)
    assert (tmp_path / "studies" / "there.db-journal").stat().st_size > 0  # the killed write's journal

    code, out, err = cli([command, "--storage", url], capsys)
    assert code == 0 and "damaged" not in err, err
    assert not (tmp_path / "studies" / "there.db-journal").exists()  # rolled back
    assert len(optuna.load_study(study_name="there", storage=url).trials) == 1


def test_a_half_created_study_is_explained_then_completed_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A driver killed between creating the study and storing its spec left a study that no
    command could use. ``studies`` says so, ``export`` says what to do, and the next run's
    set-up completes it, enqueuing the warm-start configs once."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seed.yaml").write_text(FIXED.replace("name: hostile", "name: half"))
    space = FIXED.replace("name: hostile", "name: half, enqueue: [seed.yaml]").replace(
        "width: 16}", "width: {choice: [16, 32]}}"
    )
    spec = load_spec(spec_file(tmp_path, text=space))
    url = "sqlite:///studies/half.db"
    Path("studies").mkdir()
    optuna.create_study(study_name="half", storage=url)  # ... and the driver was killed here

    code, out, _ = cli(["studies"], capsys)
    assert code == 0 and "note: study half" in out and "completes it" in out
    refused(["export", "--study", "half"], capsys, "study half has no complete trial yet")
    with pytest.raises(UserError, match="stopped while creating it"):
        study_spec(load_study(url, "half"))  # what export and report say once it has trials

    study = create_study(spec, url)  # what the next run does first
    again = create_study(spec, url)  # and a run after that
    assert SPEC_TEXT in again.user_attrs and again.metric_names == ["val_acc"]
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1  # the warm start, once
    code, out, _ = cli(["studies"], capsys)
    assert code == 0 and "note:" not in out


# --------------------------------------------------------------------------- the driver lease and the clock


@pytest.mark.parametrize("jump_s", [3600, -3600])
def test_a_clock_jump_never_ends_a_live_drivers_lease(jump_s: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live driver keeps its lease whichever way this host's wall clock jumps: a heartbeat
    that looks an hour old (or an hour ahead) is watched on the monotonic clock first."""
    study = optuna.create_study()
    real = time.time
    with DriverLease(study, heartbeat_s=0.2, stale_after_s=1):
        monkeypatch.setattr(time, "time", lambda: real() + jump_s)  # NTP steps the clock
        with pytest.raises(UserError, match="being run by another driver"):
            DriverLease(study, heartbeat_s=0.2, stale_after_s=1).acquire()
        monkeypatch.setattr(time, "time", real)


def test_a_dead_drivers_lease_dated_in_the_future_is_taken_over() -> None:
    study = optuna.create_study()
    future = {"host": "elsewhere", "pid": 1, "token": "theirs", "heartbeat": time.time() + 3600}
    study.set_user_attr(DRIVER, future)
    start = time.monotonic()
    with DriverLease(study, heartbeat_s=0.2, stale_after_s=1):
        assert study.user_attrs[DRIVER]["token"] != "theirs"
    assert time.monotonic() - start < 5  # two heartbeat intervals of watching, not an hour


# --------------------------------------------------------------------------- the data cache


def test_flipped_bytes_in_the_cache_are_detected_and_the_cache_rebuilt(
    tiny_imagefolder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("RESNET_SEARCH_CACHE", str(tmp_path / "cache"))
    config = DataConfig(dataset="imagefolder")
    # A copy: the training split reads the mapped file, which the damage below rewrites in place.
    first = load_dataset(config, data_dir=tiny_imagefolder).train.images.clone()
    (cached,) = (tmp_path / "cache" / "tensors").glob("*.pt")
    images = cached.with_suffix(".u8")
    data = bytearray(images.read_bytes())
    middle = len(data) // 2  # inside the training images' bytes
    data[middle : middle + 4096] = bytes(4096)  # zeroed, as a bad sector reads
    data[middle + 5000] ^= 0xFF  # and one flipped byte
    images.write_bytes(bytes(data))
    capsys.readouterr()

    again = load_dataset(config, data_dir=tiny_imagefolder)
    err = capsys.readouterr().err
    assert f"the data cache {cached} is damaged" in err and "rebuilding it" in err
    assert torch.equal(again.train.images, first)  # rebuilt from the images, not the damage
    load_dataset(config, data_dir=tiny_imagefolder)
    assert "damaged" not in capsys.readouterr().err  # the rebuilt file passes its check


def test_a_cache_location_that_cannot_be_written_is_one_line(
    tiny_imagefolder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    not_a_folder = tmp_path / "cache-is-a-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("RESNET_SEARCH_CACHE", str(not_a_folder))
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path, text=FIXED.replace("dataset: cifar10", "dataset: imagefolder").replace("10,", "3,"))
    refused(["train", str(spec), "--data-dir", str(tiny_imagefolder)], capsys, "set RESNET_SEARCH_CACHE to a writable")


# --------------------------------------------------------------------------- images


def image_of_every_mode(folder: Path) -> None:
    """One image per awkward mode, each 16x16 and red-ish where it has colour."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(folder / "gray16.png")  # I;16
    Image.new("RGB", (16, 16), (200, 30, 30)).convert("P").save(folder / "palette.png", transparency=0)
    Image.new("LA", (16, 16), (120, 60)).save(folder / "gray_alpha.png")
    Image.new("RGB", (16, 16), (200, 30, 30)).convert("CMYK").save(folder / "cmyk.jpg")
    rotated = np.zeros((16, 16, 3), np.uint8)
    rotated[:, :8] = 255  # stored: the left half white; shown (EXIF orientation 6): the top half
    image = Image.fromarray(rotated)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(folder / "exif_rotated.jpg", exif=exif)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(buffer, "PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_awkward_image_modes_decode_correctly_and_a_truncated_one_is_skipped(tmp_path: Path) -> None:
    image_of_every_mode(tmp_path)
    files = sorted(tmp_path.iterdir())
    decoded = decode_images(files, None)
    by_name = {files[i].name: decoded.images[k] for k, i in enumerate(decoded.kept)}
    assert [p.name for p, _ in decoded.skipped] == ["truncated.png"]
    assert by_name["gray16.png"].max() == round(40000 * 255 / 65535)  # not white: scaled to 8 bits
    assert (by_name["gray_alpha.png"] == 120).all()
    assert by_name["cmyk.jpg"][..., 0].mean() > 150 > by_name["cmyk.jpg"][..., 2].mean()
    assert by_name["palette.png"][..., 0].mean() > 150
    top, bottom = by_name["exif_rotated.jpg"][:8].mean(), by_name["exif_rotated.jpg"][8:].mean()
    assert top > 200 > 50 > bottom  # upright, as a viewer shows it


def test_skipped_images_are_counted_in_a_warning_and_a_class_left_empty_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("RESNET_SEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name, colour in TINY_CLASSES.items():
        write_class_images(root / name, colour, 8, rng, size=16)
    image_of_every_mode(root / "red")
    ds = load_dataset(DataConfig(dataset="imagefolder"), data_dir=root)
    assert "skipped 1 of 30 image files that cannot be decoded (first:" in capsys.readouterr().err
    assert len(ds.train_plus_val()) + len(ds.test) == 29

    for image in (root / "green").iterdir():
        image.write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")
    shutil.rmtree(tmp_path / "cache")  # images rewritten in place are not noticed by the cache key
    spec = spec_file(tmp_path, text=FIXED.replace("dataset: cifar10", "dataset: imagefolder").replace("10,", "3,"))
    refused(["train", str(spec), "--data-dir", str(root)], capsys, "class 'green' in")


# --------------------------------------------------------------------------- one answer to one question


def test_the_dry_run_estimates_at_the_size_the_trials_train_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """CIFAR-10 given as class folders of 48 px images, no ``image_size``: the trials train at
    48, and the dry run (which used CIFAR's 32 before) now counts and probes at 48 too."""
    monkeypatch.setenv("RESNET_SEARCH_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar10"
    for name, colour in TINY_CLASSES.items():
        write_class_images(root / "train" / name, colour, 6, rng, size=48)
        write_class_images(root / "test" / name, colour, 2, rng, size=48)
    space = FIXED.replace("num_classes: 10", "num_classes: 3").replace("width: 16}", "width: {choice: [8, 16]}}")
    spec = spec_file(tmp_path, text=space.replace("name: hostile", "name: sizes, n_trials: 2"))
    data = load_dataset(load_spec(spec).data, data_dir=str(root))
    assert trial_image_size(load_spec(spec).data, str(root), data) == data.image_size == 48
    assert trial_image_size(load_spec(spec).data, str(root)) == 48  # what the dry run asks

    code, out, err = cli(["run", str(spec), "--dry-run", "--data-dir", str(root)], capsys)
    assert code == 0, err
    assert f"{spec} at 48x48" in out
    assert not (tmp_path / "studies").exists()


def test_the_checksum_covers_every_entry() -> None:
    from search.data.cache import checksum

    tensors = {"format": 2, "images": torch.zeros(4, 3, 2, 2, dtype=torch.uint8), "classes": ["a", "b"]}
    base = checksum(tensors)
    assert checksum({**tensors, "classes": ["a", "c"]}) != base
    changed = tensors["images"].clone()
    changed[3, 2, 1, 1] = 1
    assert checksum({**tensors, "images": changed}) != base
    assert checksum({**tensors, "checksum": 123}) == base  # the stored checksum is not part of it


# --------------------------------------------------------------------------- checkpoints


def test_a_full_disk_during_a_checkpoint_write_never_leaves_a_truncated_checkpoint(
    tiny_imagefolder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The write lands on /dev/full (every write: ENOSPC): one line, the last good checkpoint
    kept whole and loadable, no partial file left; with room again, --resume continues from it."""
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path, text=FIXED.replace("dataset: cifar10", "dataset: imagefolder").replace("10,", "3,"))
    train = ["train", str(spec), "--data-dir", str(tiny_imagefolder), "--out", "run", "--device", "cpu"]
    assert cli([*train, "--epochs", "3"], capsys)[0] == 0
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    saved = checkpoint.read_bytes()
    beside = files._temporary_beside

    def on_a_full_disk(path: Path) -> tuple[Path, int]:
        """The checkpoint's temporary file is /dev/full; every other file is written as usual."""
        if path.name != checkpoint.name:
            return beside(path)
        temporary = path.with_name(f".{path.name}.full.tmp")
        temporary.symlink_to("/dev/full")
        return temporary, os.open(temporary, os.O_WRONLY)

    with monkeypatch.context() as patch:
        patch.setattr(files, "_temporary_beside", on_a_full_disk)
        refused([*train, "--epochs", "3"], capsys, "cannot write the checkpoint (No space left on device)")
    assert checkpoint.read_bytes() == saved and torch.load(checkpoint, weights_only=True)["epoch"] == 3
    assert not list((tmp_path / "run").glob("*.tmp"))  # no partial file left

    code, out, err = cli([*train, "--epochs", "3", "--resume"], capsys)  # room again: resumes from it
    assert code == 0 and "completed" in out, err

    checkpoint.write_bytes(saved[:1000])  # truncated by something else
    refused([*train, "--epochs", "3", "--resume"], capsys, "the checkpoint cannot be read")
