"""A search ends with a model in hand: model folders from ``train``, ``retrain`` and ``run --keep``,
``load_model``, ``predict``, ``evaluate``, ``export-model``, fine-tuning from a folder, and a
study that remembers its data. Everything runs through the real CLI (and real Ray) on
generated images; every folder is read back from disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import optuna
import pytest
import torch
import yaml
from conftest import TINY_CLASSES, TINY_TEST, write_class_images
from optuna.trial import TrialState
from PIL import Image
from safetensors.torch import load_file
from searching import run_cli
from tiny_model import cli

from search.outputs.model import load_model

SEARCH = """
study:
  name: {name}
  n_trials: {n_trials}
  objectives: [{{metric: val_acc, direction: maximize}}]
  sampler: {{name: random}}
  pruner: {{name: none}}
  seed: 0
data: {{dataset: imagefolder, val_fraction: 0.25}}
model:
  num_classes: 3
  stem: {{width: 8}}
  stages: [{{blocks: 1, width: {{choice: [8, 12, 16]}}}}, {{blocks: 1, width: 16}}]
train:
  epochs: 2
  batch_size: 8
  optimizer: {{name: sgd, lr: {{range: [0.01, 0.2], log: true}}}}
resources: {{cpu: 1, max_concurrent: {concurrent}}}
"""

FIXED = """
study: {{name: fixed}}
data: {{dataset: imagefolder, val_fraction: 0.25}}
model:
  num_classes: {classes}
  stem: {{width: 8}}
  stages: [{{blocks: 1, width: 8}}, {{blocks: 1, width: 16}}]
{extra}train: {{epochs: 2, batch_size: 8, optimizer: {{name: sgd, lr: 0.05}}}}
"""


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single line a bad input gets, after checking the exit status and the absence of a traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    # Decoding a dataset the first time is announced on stderr; the error is the one other line.
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("resnet-search: decoding")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def copy_of(data: Path, where: Path) -> Path:
    """A copy of a dataset that the test may move or change."""
    shutil.copytree(data, where)
    return where


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_imagefolder: Path, _session_data_cache: Path) -> Path:
    """A model folder made by ``resnet-search train`` on a copy of the tiny image folder."""
    root = tmp_path_factory.mktemp("trained")
    data = copy_of(tiny_imagefolder, root / "data")
    (root / "fixed.yaml").write_text(FIXED.format(classes=3, extra=""))
    env = {"RESNET_SEARCH_CACHE": str(_session_data_cache)}
    result = cli(["train", "fixed.yaml", "--data-dir", str(data), "--out", "model", "--device", "cpu"], root, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "model folder: model"
    return root / "model"


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow  # a real (local) Ray
def test_run_retrain_predict_evaluate_export_end_to_end(tmp_path: Path, tiny_imagefolder: Path) -> None:
    data = copy_of(tiny_imagefolder, tmp_path / "data")
    (tmp_path / "s.yaml").write_text(SEARCH.format(name="s", n_trials=4, concurrent=1))
    ran = cli(["run", "s.yaml", "--data-dir", str(data), "--keep", "2"], tmp_path)
    assert ran.returncode == 0, ran.stderr

    # --keep 2: exactly the two best complete trials keep their weights, as model folders.
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/studies/s.db")
    complete = sorted(
        (t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.values[0], t.number)
    )
    assert len(complete) == 4
    models = tmp_path / "studies" / "s" / "models"
    assert sorted(p.name for p in models.iterdir()) == sorted(f"trial_{t.number}" for t in complete[:2])
    assert not list((tmp_path / "studies" / "s" / "ray").rglob("model.safetensors"))  # nothing left elsewhere
    for trial in complete[:2]:
        info = json.loads((models / f"trial_{trial.number}" / "model.json").read_text())
        assert (info["study"], info["trial"], info["val_acc"]) == ("s", trial.number, trial.values[0])

    # export and report point to the kept weights.
    best = models / f"trial_{complete[0].number}"
    exported = cli(["export", "--study", "s", "--top", "1", "--out", "exported"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert yaml.safe_load((tmp_path / exported.stdout.strip()).read_text())["provenance"]["model"] == str(best)
    assert f"(val_acc {complete[0].values[0]:.4f}, weights): {best}" in exported.stderr
    reported = cli(["report", "--study", "s", "--out", "report.html"], tmp_path)
    assert reported.returncode == 0, reported.stderr
    assert str(best) in (tmp_path / "report.html").read_text() and str(data) in (tmp_path / "report.html").read_text()

    # The study remembers its data: retrain as the end of `run` suggests, without --data-dir.
    retrained = cli(["retrain", "--study", "s", "--top", "1", "--device", "cpu"], tmp_path)
    assert retrained.returncode == 0, retrained.stderr
    folder = tmp_path / "runs" / "s" / "retrain" / f"trial{complete[0].number}" / "seed0"
    assert f"model folder: {folder.relative_to(tmp_path)}" in retrained.stdout
    test_acc = json.loads((folder / "metrics.json").read_text())["test_acc"]

    some_jpg = tmp_path / "some.jpg"
    Image.open(data / "test" / "red" / "0000.png").save(some_jpg, quality=95)
    predicted = cli(["predict", str(folder), str(some_jpg), "--top-k", "2"], tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    file, label, probability, second, _ = predicted.stdout.split()
    assert file == str(some_jpg) and {label, second} <= set(TINY_CLASSES) and 0 < float(probability) <= 1

    evaluated = cli(["evaluate", str(folder)], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"accuracy {test_acc:.2%}" in evaluated.stdout
    evaluation = json.loads((folder / "evaluation_test.json").read_text())
    assert evaluation["accuracy"] == test_acc and evaluation["images"] == TINY_TEST * len(TINY_CLASSES)

    check_exports(folder, tmp_path)

    # Data that moved: one line naming the recorded location and the way out.
    data.rename(tmp_path / "moved")
    line = one_error_line(cli(["retrain", "--study", "s", "--top", "1"], tmp_path))
    assert f"used the data at {data}, which no longer exists" in line and "--data-dir" in line


def check_exports(folder: Path, cwd: Path) -> None:
    """TorchScript and ONNX through the CLI, then loaded again here and run against the eager model."""
    model = load_model(folder, "cpu")
    inputs = torch.randn(5, 3, 32, 32)  # another batch size than the export's check used
    with torch.inference_mode():
        eager = model.module(inputs.contiguous(memory_format=torch.channels_last)).float()
    for fmt, name in (("torchscript", "model.pt"), ("onnx", "model.onnx")):
        exported = cli(["export-model", str(folder), "--format", fmt], cwd)
        assert exported.returncode == 0, exported.stderr
        assert f"{folder / name}: max abs diff" in exported.stdout
    with torch.inference_mode():
        scripted = torch.jit.load(str(folder / "model.pt"))(inputs)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["logits"], {"images": inputs.numpy()})
    assert (scripted - eager).abs().max() < 1e-4
    assert np.abs(onnx_out - eager.numpy()).max() < 1e-4


# --------------------------------------------------------------------------- a cluster


@pytest.mark.slow
def test_kept_weights_reach_the_drivers_study_folder_from_a_two_node_cluster(
    tmp_path: Path, tiny_imagefolder: Path, ray_cluster
) -> None:
    (tmp_path / "c.yaml").write_text(SEARCH.format(name="c", n_trials=3, concurrent=3))
    args = ["run", "c.yaml", "--data-dir", str(tiny_imagefolder), "--address", ray_cluster.address, "--keep", "3"]
    driver = run_cli(args, tmp_path, env=ray_cluster.env)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{tmp_path}/studies/c.db")
    kept = sorted(p.name for p in (tmp_path / "studies" / "c" / "models").iterdir())
    assert kept == [f"trial_{t.number}" for t in study.trials if t.state == TrialState.COMPLETE] and len(kept) == 3
    for name in kept:
        assert (
            load_model(tmp_path / "studies" / "c" / "models" / name, "cpu")
            .predict([tiny_imagefolder / "test" / "red" / "0000.png"])[0]
            .label
            in TINY_CLASSES
        )
    # Three trials at once on 2 + 1 CPUs: one trainable ran on the worker node.
    assert trainable_nodes(ray_cluster, driver.pid) == {"head", "worker"}


def trainable_nodes(cluster, driver_pid: int) -> set[str]:
    """Which nodes (``head``, ``worker``) ran the Tune trainables of the driver ``driver_pid``, as the
    cluster's GCS remembers its (dead) actors; the cluster runs no dashboard (no state API)."""
    code = (
        "import json, ray\n"
        f"ray.init(address={cluster.address!r}, logging_level='ERROR')\n"
        "heads = {n['NodeID']: 'node:__internal_head__' in n['Resources'] for n in ray.nodes()}\n"
        f"jobs = {{j['JobID'] for j in ray._private.state.jobs() if j['DriverPid'] == {driver_pid}}}\n"
        "actors = [a for a in ray._private.state.actors().values() if a['JobID'] in jobs]\n"
        "ran = {a['Address']['NodeID'] for a in actors if a['ActorClassName'].endswith('ImplicitFunc')}\n"
        "print(json.dumps(sorted('head' if heads.get(node) else 'worker' for node in ran)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **cluster.env}, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- a folder on its own


def test_a_copied_model_folder_loads_in_a_fresh_process_without_study_data_or_ray(
    trained: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(trained, tmp_path / "elsewhere" / "model")
    image = tmp_path / "red.png"
    write_class_images(tmp_path / "images", TINY_CLASSES["red"], 1, np.random.default_rng(1))
    shutil.move(tmp_path / "images" / "0000.png", image)
    code = (
        "import json, sys, search\n"
        f"model = search.load_model({str(copy)!r}, device='cpu')\n"
        f"p = model.predict([{str(image)!r}], top_k=3)[0]\n"
        "heavy = sorted(m for m in ('ray', 'optuna', 'search.study', 'search.engine') if m in sys.modules)\n"
        "print(json.dumps([p.label, p.probability, list(model.classes), heavy]))\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()  # cwd and cache hold no study and no data
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=empty,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RESNET_SEARCH_CACHE": str(empty / "cache")},
    )
    assert result.returncode == 0, result.stderr
    label, probability, classes, heavy = json.loads(result.stdout)
    assert heavy == [] and classes == sorted(TINY_CLASSES)
    assert not (empty / "cache").exists()  # no data was looked for
    here = load_model(trained, "cpu").predict([image])[0]
    assert (label, probability) == (here.label, pytest.approx(here.probability, abs=1e-6))


# --------------------------------------------------------------------------- fine-tuning


def test_fine_tuning_another_task_with_a_frozen_backbone_changes_only_the_head(trained: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    other = tmp_path / "two_classes"
    for name, colour in {"cyan": (40, 220, 220), "yellow": (230, 220, 40)}.items():
        write_class_images(other / "train" / name, colour, 8, rng)
        write_class_images(other / "test" / name, colour, 4, rng)
    spec = tmp_path / "tune.yaml"
    spec.write_text(FIXED.format(classes=2, extra=f"  init_from: {trained}\n  freeze: all_but_head\n"))
    result = cli(["train", str(spec), "--data-dir", str(other), "--out", "tuned", "--device", "cpu"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "head re-initialised for 2 classes (the folder's model has 3): head.0.weight, head.0.bias" in result.stderr

    before, after = load_file(trained / "model.safetensors"), load_file(tmp_path / "tuned" / "model.safetensors")
    parameters = {name for name, _ in load_model(tmp_path / "tuned", "cpu").module.named_parameters()}
    changed = {
        name for name in parameters if before[name].shape != after[name].shape or not before[name].equal(after[name])
    }
    assert changed == {"head.0.weight", "head.0.bias"}
    assert json.loads((tmp_path / "tuned" / "model.json").read_text())["classes"] == ["cyan", "yellow"]


def test_train_init_starts_from_a_model_folder_and_config_yaml_keeps_it(trained: Path, tmp_path: Path) -> None:
    spec = tmp_path / "again.yaml"
    spec.write_text(FIXED.format(classes=3, extra=""))
    data = json.loads((trained / "model.json").read_text())["data"]["location"]
    result = cli(["train", str(spec), "--data-dir", data, "--init", str(trained), "--out", "again"], tmp_path)
    assert result.returncode == 0, result.stderr
    tensors = len(load_file(trained / "model.safetensors"))
    assert f"init_from {trained}: {tensors} tensors loaded; freeze none" in result.stderr
    assert f"init_from: {trained}" in (tmp_path / "again" / "config.yaml").read_text()


# --------------------------------------------------------------------------- bad input


def damaged(trained: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the trained folder, damaged as ``how`` says."""
    folder = Path(shutil.copytree(trained, tmp_path / how))
    weights = folder / "model.safetensors"
    if how == "missing weights":
        weights.unlink()
    elif how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "weights of another config":
        config = folder / "config.yaml"
        config.write_text(config.read_text().replace("width: 8\n", "width: 12\n", 1))
    return folder


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("not a model folder", "not a model folder (no model.json, config.yaml, model.safetensors)"),
        ("missing weights", "not a model folder (no model.safetensors)"),
        ("truncated weights", "model.safetensors: truncated or not a safetensors file"),
        (
            "weights of another config",
            "does not fit the model of config.yaml: stem.0.weight is (8, 3, 3, 3) in the file",
        ),
    ],
)
def test_a_bad_model_folder_is_one_line_and_exit_2(trained: Path, tmp_path: Path, how: str, expected: str) -> None:
    folder = (tmp_path / "empty") if how == "not a model folder" else damaged(trained, tmp_path, how)
    folder.mkdir(exist_ok=True)
    image = trained.parent / "data" / "test" / "red" / "0000.png"
    assert expected in one_error_line(cli(["predict", str(folder), str(image)], tmp_path))


def test_a_bad_image_is_reported_and_the_others_are_still_predicted(trained: Path, tmp_path: Path) -> None:
    good = trained.parent / "data" / "test" / "blue" / "0000.png"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((32, 32), 128, dtype=np.uint8), mode="L").save(gray)
    result = cli(["predict", str(trained), str(broken), str(good), str(gray)], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # Grayscale is converted to RGB, as training converts it (one decoding path).
    assert [line.split()[0] for line in result.stdout.strip().splitlines()] == [str(good), str(gray)]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1
    assert errors[0].startswith(f"resnet-search: error: {broken}: not a readable image")


def test_evaluate_refuses_recorded_data_that_changed_and_takes_data_dir_as_the_way_out(
    trained: Path, tmp_path: Path
) -> None:
    data = Path(json.loads((trained / "model.json").read_text())["data"]["location"])
    folder = shutil.copytree(trained, tmp_path / "model")
    changed = copy_of(data, tmp_path / "changed")
    info = json.loads((folder / "model.json").read_text())
    info["data"]["location"] = str(changed)
    (folder / "model.json").write_text(json.dumps(info))
    write_class_images(changed / "train" / "red", TINY_CLASSES["red"], 1, np.random.default_rng(3), suffix="_new.png")
    line = one_error_line(cli(["evaluate", str(folder)], tmp_path))
    assert f"the data at {changed} is not what model {folder} used (" in line and "recorded" in line
    assert "--data-dir" in line
    result = cli(["evaluate", str(folder), "--data-dir", str(data), "--split", "val"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((folder / "evaluation_val.json").read_text())["images"] == 9


@pytest.mark.parametrize("variant", ["resnet20", "se_resnet_443", "preact_resnet18", "resnet34_aux", "tv_resnet18"])
@pytest.mark.parametrize("freeze", ["none", "all_but_last_stage", "all_but_head"])
def test_each_freeze_strategy_trains_what_the_count_says(variant: str, freeze: str) -> None:
    from dataclasses import replace

    from search.budget import fast_count
    from search.models import VARIANTS, build_model

    config = replace(VARIANTS[variant], freeze=freeze)
    model = build_model(config, 32)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert fast_count(config, 32).trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    names = [name for name, _ in model.named_parameters()]
    head = {n for n in names if n.startswith("fc." if variant.startswith("tv_") else "head.")}
    assert head and head <= trainable and (freeze == "none") == (len(trainable) == len(names))
    if freeze == "all_but_head":
        assert all(not n.startswith(("stem.", "stages.", "conv1.", "layer")) for n in trainable)
