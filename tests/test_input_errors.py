"""Bad input through the real CLI, as a table: each case is one line on stderr naming what is
wrong (and how to fix it), exit status 2, no traceback, and nothing written to any study.
Unsafe input (YAML tags, archive members that escape, links) is refused the same way."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from searching import sqlite_url, study_exists, write_spec
from services import POSTGRES_PASSWORD

pytestmark = pytest.mark.slow

Case = Callable[[Path, Path], list[str]]  # (tmp_path, tiny_imagefolder) -> CLI arguments


def run_args(spec: Path, data: Path, *extra: str) -> list[str]:
    return ["run", str(spec), "--data-dir", str(data), *extra]


def spec_with(tmp: Path, replace: str, by: str) -> Path:
    """The tests' search spec with one piece of text replaced."""
    path = write_spec(tmp, "bad", n_trials=2, epochs=1)
    text = path.read_text()
    assert replace in text
    path.write_text(text.replace(replace, by))
    return path


def typo_in_a_key(tmp: Path, data: Path) -> list[str]:
    return run_args(spec_with(tmp, "blocks: {range", "blokcs: {range"), data)


def budget_no_config_meets(tmp: Path, data: Path) -> list[str]:
    return run_args(write_spec(tmp, "bad", n_trials=2, epochs=1, max_params=1000), data)


def nothing_to_search(tmp: Path, data: Path) -> list[str]:
    spec = spec_with(tmp, "{range: [1, 2]}", "1")
    text = spec.read_text().replace("{choice: [8, 16, 96]}", "8").replace("{range: [0.0001, 0.5], log: true}", "0.1")
    spec.write_text(text)
    return run_args(spec, data)


def on_device_not_a_choice(tmp: Path, data: Path) -> list[str]:
    return run_args(spec_with(tmp, "val_fraction: 0.25}", "val_fraction: 0.25, on_device: yes please}"), data)


def a_zero_memory_budget(tmp: Path, data: Path) -> list[str]:
    return run_args(spec_with(tmp, "val_fraction: 0.25}", "val_fraction: 0.25, device_memory_budget_mb: 0}"), data)


def empty_data_folder(tmp: Path, data: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return run_args(write_spec(tmp, "bad", 2, 1), tmp / "empty")


def corrupt_images(tmp: Path, data: Path) -> list[str]:
    """One corrupt image is skipped with a warning (test_hostile_inputs); a class of only corrupt ones is refused."""
    copy = tmp / "images"
    shutil.copytree(data, copy)
    for image in (copy / "train" / "red").iterdir():
        image.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image needs")
    return run_args(write_spec(tmp, "bad", 2, 1), copy)


def corrupt_archive(tmp: Path, data: Path) -> list[str]:
    (tmp / "data.tar.gz").write_bytes(b"\x1f\x8b\x08 this gzip stream stops here")
    return run_args(write_spec(tmp, "bad", 2, 1), tmp / "data.tar.gz")


def one_class(tmp: Path, data: Path) -> list[str]:
    for split in ("train", "test"):
        shutil.copytree(data / split / "red", tmp / "one" / split / "red")
    return run_args(write_spec(tmp, "bad", 2, 1), tmp / "one")


def unknown_storage_scheme(tmp: Path, data: Path) -> list[str]:
    return run_args(write_spec(tmp, "bad", 2, 1), data, "--storage", "redis://localhost:6379/0")


def mismatching_weights(tmp: Path, data: Path) -> list[str]:
    torch.save(torchvision.models.resnet18().state_dict(), tmp / "resnet18.pth")
    spec = tmp / "transfer.yaml"
    spec.write_text(
        "study: {name: bad}\n"
        "data: {dataset: imagefolder, image_size: 32}\n"
        f"model: {{name: resnet34, num_classes: 3, weights: {tmp / 'resnet18.pth'}, "
        "freeze: {choice: [none, all_but_head]}}\n"
    )
    return run_args(spec, data)


def older_schema_version(tmp: Path, data: Path) -> list[str]:
    exported = tmp / "exported.yaml"
    exported.write_text("schema_version: 0\nstudy: {name: bad}\nmodel: {num_classes: 3}\n")
    return ["train", str(exported), "--data-dir", str(data)]


def more_gpus_than_exist(tmp: Path, data: Path) -> list[str]:
    return run_args(spec_with(tmp, "cpu: 1,", "cpu: 1, gpu: 2,"), data)


def more_cpus_than_exist(tmp: Path, data: Path) -> list[str]:
    return run_args(spec_with(tmp, "cpu: 1,", "cpu: 64,"), data)


def unsafe_yaml_tag(tmp: Path, data: Path) -> list[str]:
    spec = spec_with(tmp, "seed: 0", f"seed: !!python/object/apply:os.system ['touch {tmp / 'pwned'}']")
    return run_args(spec, data)


def tar_with(tmp: Path, member: tarfile.TarInfo, payload: bytes = b"") -> Path:
    archive = tmp / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(payload) if payload else None)
    return archive


def archive_member_escapes(tmp: Path, data: Path) -> list[str]:
    member = tarfile.TarInfo("../escaped.txt")
    member.size = 5
    return run_args(write_spec(tmp, "bad", 2, 1), tar_with(tmp, member, b"hello"))


def archive_member_is_a_link(tmp: Path, data: Path) -> list[str]:
    member = tarfile.TarInfo("train/red/link.png")
    member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return run_args(write_spec(tmp, "bad", 2, 1), tar_with(tmp, member))


def prior_weight_above_one(tmp: Path, data: Path) -> list[str]:
    return run_args(spec_with(tmp, "  seed: 0\n", "  seed: 0\n  prior: {designs: [design.yaml], weight: 1.5}\n"), data)


def prior_design_outside_the_space(tmp: Path, data: Path) -> list[str]:
    (tmp / "design.yaml").write_text(
        "model: {num_classes: 3, stem: {width: 8}, stages: [{blocks: 9, width: 8}, {blocks: 1, width: 16}]}\n"
        "train: {optimizer: {name: sgd, lr: 0.1}}\n"
    )
    return run_args(spec_with(tmp, "  seed: 0\n", "  seed: 0\n  prior: {designs: [design.yaml]}\n"), data)


CASES: dict[str, tuple[Case, str]] = {
    "typo in a key": (typo_in_a_key, "unknown key (did you mean 'blocks'?)"),
    "a budget no config meets": (budget_no_config_meets, "no config of the space fits (the smallest config found has"),
    "a space with nothing to search": (nothing_to_search, "nothing to search"),
    "an empty data folder": (empty_data_folder, "holds no dataset"),
    "data.on_device not a choice": (on_device_not_a_choice, "data.on_device: 'yes please' is not one of"),
    "a zero device memory budget": (a_zero_memory_budget, "data.device_memory_budget_mb"),
    "a class of corrupt images": (corrupt_images, "class 'red' in"),
    "a corrupt archive": (corrupt_archive, "cannot be read"),
    "class folders with one class": (one_class, "has 1 class folder (red); a classifier needs at least 2"),
    "an unknown storage scheme": (unknown_storage_scheme, "unknown scheme 'redis'; use one of"),
    "pretrained weights of another architecture": (mismatching_weights, "do not fit resnet34: missing layer"),
    "an exported config of an older schema": (older_schema_version, "schema_version: the file has schema version 0"),
    "more GPUs than exist": (more_gpus_than_exist, "resources.gpu: 2 GPUs per trial, the Ray cluster has 0"),
    "more CPUs than exist": (more_cpus_than_exist, "resources.cpu: 64 CPUs per trial"),
    "an unsafe YAML tag": (unsafe_yaml_tag, "could not determine a constructor for the tag"),
    "an archive member that escapes": (archive_member_escapes, "its path leaves the extraction folder"),
    "an archive member that is a link": (archive_member_is_a_link, "a link, not a plain file or folder"),
    "a prior weight above 1": (prior_weight_above_one, "study.prior.weight: must be <= 1.0, got 1.5"),
    "a prior design outside the space": (prior_design_outside_the_space, "study.prior.designs[0]: design.yaml is not"),
}


def assert_refused(args: list[str], cwd: Path, expected: str, study: str = "bad") -> str:
    """Run the CLI; it must fail with one error line holding ``expected`` and write no study."""
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    errors = [
        line
        for line in result.stderr.splitlines()
        if not line.startswith(("resnet-search: decoding", "resnet-search: extracting", "resnet-search: warning"))
    ]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and errors[0].startswith("resnet-search: error: "), result.stderr
    assert expected in errors[0], errors[0]
    assert not study_exists(sqlite_url(cwd, study), study)
    return errors[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: str, tmp_path: Path, tiny_imagefolder: Path) -> None:
    make_args, expected = CASES[case]
    assert_refused(make_args(tmp_path, tiny_imagefolder), tmp_path, expected)
    assert not (tmp_path / "pwned").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_a_wrong_database_password_is_one_line_without_the_password(
    tmp_path: Path, tiny_imagefolder: Path, postgres
) -> None:
    wrong = postgres.url.replace(POSTGRES_PASSWORD, "not-the-password")
    line = assert_refused(
        run_args(write_spec(tmp_path, "bad", 2, 1), tiny_imagefolder, "--storage", wrong), tmp_path, "cannot connect"
    )
    assert "password authentication failed" in line and "not-the-password" not in line and "***@" in line


def test_a_malicious_checkpoint_is_refused_not_run(tmp_path: Path, tiny_imagefolder: Path) -> None:
    """torch.load with weights_only: a pickle that would run code is refused."""

    class RunsCode:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"conv1.weight": RunsCode()}, tmp_path / "evil.pth")
    spec = tmp_path / "transfer.yaml"
    spec.write_text(
        "study: {name: bad}\n"
        "data: {dataset: imagefolder, image_size: 32}\n"
        f"model: {{name: resnet18, num_classes: 3, weights: {tmp_path / 'evil.pth'}, "
        "freeze: {choice: [none, all_but_head]}}\n"
    )
    assert_refused(run_args(spec, tiny_imagefolder), tmp_path, "refused by torch.load(weights_only=True)")
    assert not (tmp_path / "pwned").exists()
