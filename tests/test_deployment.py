"""Deployment budgets: peak activation memory and model size exact against a trace of the real
network; latency measured before training, rejected like an over-parameter config, cached per
architecture on the study; bad latency settings are one line and exit status 2."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import optuna
import optuna_dashboard
import pytest
import torch
from optuna.trial import TrialState
from test_counts import random_cases

from search.budget.latency import LatencyMeasurement, latency_key, machine_record, measure_latency, settle_latency
from search.budget.memory import Footprint, check_footprint, footprint, measure_footprint
from search.budget.survey import budget_lines, count_spec
from search.cli import main
from search.config import (
    BudgetConfig,
    Head,
    LatencyConfig,
    ResNetConfig,
    SqueezeExcite,
    Stage,
    Stem,
    TorchvisionResNetConfig,
    parse_spec,
)
from search.config.blocks import BLOCK_TYPES
from search.engine.bridge import StudyBridge, TrialSetup
from search.engine.samplers import create_study
from search.models import VARIANTS, build_model
from search.outputs.figures import latency_sections
from search.outputs.report import write_report
from search.study.keys import ACTIVATION_KB, LATENCY_CACHE, LATENCY_KEY, LATENCY_MS, MODEL_KB, REJECTED


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    """Batch-1 images of tiny models: more threads only add overhead on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- memory and model size


@pytest.mark.parametrize("block", sorted(BLOCK_TYPES))
@pytest.mark.parametrize("preact", [False, True])
@pytest.mark.parametrize("shortcut", ["projection", "identity"])
@pytest.mark.parametrize("se", ["none", "stem", "blocks"])
def test_footprint_equals_the_traced_one_for_every_registered_block(
    block: str, preact: bool, shortcut: str, se: str
) -> None:
    config = ResNetConfig(
        stem=Stem(6, 3, 1, True),
        stages=(Stage(2, 8), Stage(1, 12), Stage(1, 4)),  # widening, then narrowing: both option A cases
        block=block,
        preact=preact,
        shortcut=shortcut,
        se=SqueezeExcite(se, 4),
        head=Head((7,), batchnorm=True, dropout=0.1),
        dropout=0.2,
    )
    assert footprint(config, 19) == measure_footprint(build_model(config, 19), 19)


@pytest.mark.parametrize("seed", range(2))
def test_footprint_equals_the_traced_one_on_random_configs(seed: int) -> None:
    for config, size in random_cases(20, seed + 10):
        assert footprint(config, size) == measure_footprint(build_model(config, size), size, config.in_channels), config


def test_footprint_of_torchvision_resnet18_at_224_equals_the_traced_one() -> None:
    config = TorchvisionResNetConfig(name="resnet18", num_classes=10, dropout=0.2)
    model = build_model(config)
    found = footprint(config, 224)
    assert found == measure_footprint(model, 224)
    # The weights inference reads: every parameter and BatchNorm running statistic.
    running = sum(m.running_mean.numel() + m.running_var.numel() for m in model.modules() if hasattr(m, "running_var"))
    assert found.model_elements == sum(p.numel() for p in model.parameters()) + running


@pytest.mark.parametrize("name", ["tv_resnet50", "resnet34_aux", "se_resnet_443", "preact_resnet18"])
def test_footprint_equals_the_traced_one_on_variants(name: str) -> None:
    config = VARIANTS[name]
    size = 64 if name in ("tv_resnet50", "resnet34_aux") else 32
    model = build_model(config, size)
    assert footprint(config, size) == measure_footprint(model, size)
    if name == "resnet34_aux":  # the auxiliary head does not run at inference: its weights are not read
        aux = sum(p.numel() for p in model.aux_head.parameters())
        running = sum(m.running_var.numel() * 2 for m in model.modules() if hasattr(m, "running_var"))
        assert footprint(config, size).model_elements == sum(p.numel() for p in model.parameters()) - aux + running


def test_the_trace_sees_what_the_count_would_miss() -> None:
    """The check can fail: a model that keeps an extra activation alive is measured larger."""
    config = ResNetConfig(stages=(Stage(1, 8),), stem=Stem(8))
    model = build_model(config, 16)
    forward = model.forward_features

    def keeping(x: torch.Tensor) -> tuple[torch.Tensor, None]:
        copy = x * 1.0  # a second copy of the input, read again at the end
        features, aux = forward(x)
        return features + copy.mean(), aux

    model.forward_features = keeping  # type: ignore[method-assign]
    assert measure_footprint(model, 16).activation_elements > footprint(config, 16).activation_elements


def test_memory_limits_use_the_deployment_precision() -> None:
    found = Footprint(activation_elements=1024, model_elements=4096)
    assert found.activation_kb("fp32") == 4.0 and found.activation_kb("int8") == 1.0
    assert check_footprint(found, BudgetConfig(max_activation_kb=2)) == "activation memory 4.0 kb (fp32) > max 2 kb"
    int8 = BudgetConfig(max_activation_kb=2, max_model_kb=4, latency=LatencyConfig(precision="int8"))
    assert check_footprint(found, int8) is None
    assert check_footprint(found, BudgetConfig(max_model_kb=15.9)) == "model size 16.0 kb (fp32) > max 15.9 kb"


# --------------------------------------------------------------------------- latency in a search

SPACE = """
study: {{name: fast, n_trials: 3, max_rejections: 4, objectives: [{objectives}]}}
data: {{dataset: imagefolder, image_size: 16}}
model:
  num_classes: 3
  stem: {{width: 8}}
  stages: [{{blocks: 1, width: {{choice: {widths}}}}}]
train: {{epochs: 1, optimizer: {{name: sgd, lr: {{range: [0.01, 0.1], log: true}}}}}}
budget: {{max_latency_ms: {limit:f}, latency: {{runtime: torch, warmup: 1, repeats: 3}}}}
"""


def make_bridge(
    storage: str, limit: float, widths: str = "[8]", objectives: str = "{metric: val_acc, direction: maximize}"
) -> StudyBridge:
    spec = parse_spec(SPACE.format(limit=limit, widths=widths, objectives=objectives), "fast.yaml")
    return StudyBridge(create_study(spec, storage), spec, TrialSetup(16))


@pytest.fixture
def storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def test_a_config_over_the_latency_limit_is_rejected_before_training(storage: str) -> None:
    bridge = make_bridge(storage, limit=0.000001)  # no model answers within a nanosecond
    assert bridge.next_job() is None
    assert "4 samples in a row" in bridge.stop_reason
    trials = bridge.study.get_trials()
    assert len(trials) == 4 and bridge.tally.rejected == 4
    for trial in trials:
        assert trial.state == TrialState.PRUNED and not trial.intermediate_values
        reason = trial.user_attrs[REJECTED]
        assert reason.startswith(f"latency {trial.user_attrs[LATENCY_MS]:.3f} ms > max 1e-06 ms (torch on cpu")
        assert trial.constraints["latency_ms"] > 0  # the sampler is told
    assert bridge.deployment.measured == 1  # one architecture: measured once, the cache answers the rest


def test_configs_within_the_limit_train_with_their_latency_recorded(storage: str) -> None:
    bridge = make_bridge(storage, limit=1e6, widths="[4, 8]")
    jobs = [bridge.next_job() for _ in range(3)]
    assert all(job is not None for job in jobs) and bridge.next_job() is None
    trials = bridge.study.get_trials()
    assert not [t for t in trials if REJECTED in t.user_attrs]
    for trial in trials:
        assert 0 < trial.user_attrs[LATENCY_MS] < 1e6 and trial.constraints["latency_ms"] < 0
        assert trial.user_attrs[ACTIVATION_KB] > 0 and trial.user_attrs[MODEL_KB] > 0
        record = LatencyMeasurement.from_dict(bridge.study.user_attrs[trial.user_attrs[LATENCY_KEY]])
        assert record is not None and record.median_ms == trial.user_attrs[LATENCY_MS]
        assert record.machine["cpu"] and record.settings["threads"] == 1 and record.settings["runtime"] == "torch"
    architectures = {t.params["model.stages.0.width"] for t in trials}
    assert bridge.deployment.measured == len(architectures)


def test_the_cache_measures_an_architecture_once_per_study(storage: str) -> None:
    first = make_bridge(storage, limit=1e6)
    for _ in range(3):
        first.finish(first.next_job().number, {"val_acc": 0.5}, error=False)
    assert first.deployment.measured == 1
    cached = [k for k in first.study.user_attrs if k.startswith(LATENCY_CACHE)]
    assert len(cached) == 1
    # The same study continued (a rerun): the stored measurement answers, nothing is measured.
    spec = parse_spec(
        SPACE.format(limit=1e6, widths="[8]", objectives="{metric: val_acc}").replace("n_trials: 3", "n_trials: 5")
    )
    again = StudyBridge(create_study(spec, storage), spec, TrialSetup(16))
    assert again.next_job() is not None and again.deployment.measured == 0
    # A cache entry that is not a measurement (stored data is untrusted) is measured again.
    first.study.set_user_attr(cached[0], {"median_ms": float("nan")})
    third = StudyBridge(create_study(spec, storage), spec, TrialSetup(16))
    assert third.next_job() is not None and third.deployment.measured == 1


def test_latency_is_an_objective(storage: str) -> None:
    objectives = "{metric: val_acc, direction: maximize}, {metric: latency_ms, direction: minimize}"
    bridge = make_bridge(storage, limit=1e6, widths="[4, 8]", objectives=objectives)
    job = bridge.next_job()
    bridge.finish(job.number, {"val_acc": 0.5}, error=False)
    trial = bridge.study.get_trials()[job.number]
    assert trial.state == TrialState.COMPLETE
    assert trial.values == [0.5, trial.user_attrs[LATENCY_MS]]
    assert bridge.study.metric_names == ["val_acc", "latency_ms"]


def test_the_report_plots_the_result_against_latency_with_the_pareto_front(storage: str, tmp_path) -> None:
    bridge = make_bridge(storage, limit=1e6, widths="[4, 8, 16]")
    for accuracy in (0.4, 0.6, 0.5):
        job = bridge.next_job()
        bridge.finish(job.number, {"val_acc": accuracy}, error=False)
    files = write_report(bridge.study, storage, tmp_path / "report.html")
    assert "Result vs latency, the budget and the Pareto front" in files.html.read_text()
    ((_, figure),) = latency_sections(bridge.study, 1e6)
    points = [(t.user_attrs[LATENCY_MS], t.values[0]) for t in bridge.study.get_trials() if t.values]
    dominated = {p for p in points for q in points if q != p and q[0] <= p[0] and q[1] >= p[1]}
    front = figure.data[-1]
    assert front.name == "Pareto front" and set(zip(front.x, front.y)) == set(points) - dominated
    assert latency_sections(make_bridge(f"sqlite:///{tmp_path / 'none.db'}", limit=1e6).study, None) == []
    note = optuna_dashboard.get_note(optuna.Trial(bridge.study, bridge.study.get_trials()[0]._trial_id))
    assert "deployment: latency " in note and " ms, activation memory " in note and " kb, model " in note


def test_a_rehearsal_measures_nothing(storage: str) -> None:
    spec = parse_spec(SPACE.format(limit=0.000001, widths="[8]", objectives="{metric: val_acc}"), "fast.yaml")
    bridge = StudyBridge(create_study(spec, storage), spec, TrialSetup(16), reference_check=False)
    assert bridge.next_job() is not None and bridge.deployment.measured == 0


def test_count_and_the_dry_run_show_each_budget(tmp_path) -> None:
    text = SPACE.format(limit=1e6, widths="[4, 8, 64]", objectives="{metric: val_acc}")
    text = text.replace("budget: {", "budget: {max_activation_kb: 20, max_model_kb: 100, ")
    spec = parse_spec(text, "fast.yaml")
    report = count_spec(spec, samples=60, image_size=16, latency=True)
    shares = report.fit_shares()
    assert set(shares) == {"activation_kb", "model_kb"}
    for name, limit in (("activation_kb", 20), ("model_kb", 100)):
        within = [getattr(s.footprint, name)("fp32") <= limit for s in report.sizes]
        assert shares[name] == sum(within) / len(within) and 0 < shares[name] < 1  # width 64 is over both
    assert report.fit_share == sum(s.fits for s in report.sizes) / len(report.sizes)
    table = report.table()
    assert "max 20 kb activation, max 100 kb model, max 1e+06 ms latency" in table
    assert "latency (smallest): " in table and "latency (largest): " in table
    lines = budget_lines(spec, report, samples=3)
    assert lines[0].startswith(f"budgets: of {len(report.sizes)} sampled configs {shares['activation_kb']:.1%} within")
    assert lines[1].startswith("latency (torch on cpu, 1 thread(s), batch 1, fp32): 3 configs from the smallest")
    assert ", 3 within max 1e+06 ms;" in lines[1]


# --------------------------------------------------------------------------- the measurement


def measurement(median: float) -> LatencyMeasurement:
    settings = dataclasses.asdict(LatencyConfig(runtime="torch")) | {"image_size": 16}
    return LatencyMeasurement(median, median * 0.9, median * 1.1, settings, {"cpu": "x"}, None, 0.1)


def test_a_config_near_the_limit_is_measured_again_and_the_lower_median_counts() -> None:
    budget = BudgetConfig(max_latency_ms=10.0, latency=LatencyConfig(tolerance=0.1))
    for first, second, measured, median in (
        (10.5, 9.5, 2, 9.5),
        (10.5, 12.0, 2, 10.5),
        (11.5, 9.0, 1, 11.5),
        (9.0, 20.0, 1, 9.0),
    ):
        results = iter([measurement(first), measurement(second)])
        settled = settle_latency(lambda results=results: next(results), budget)
        assert (settled.measurements, settled.median_ms) == (measured, median), (first, second)


def test_the_cache_key_follows_the_architecture_settings_and_machine() -> None:
    settings = LatencyConfig(runtime="torch")
    machine = machine_record(settings)
    config = ResNetConfig(stages=(Stage(1, 8),))
    key = latency_key(config, 16, settings, machine)
    same_graph = dataclasses.replace(config, dropout=0.3, zero_init_residual=True, head=Head(dropout=0.2))
    assert latency_key(same_graph, 16, dataclasses.replace(settings, tolerance=0.3), machine) == key
    assert latency_key(ResNetConfig(stages=(Stage(1, 12),)), 16, settings, machine) != key
    assert latency_key(config, 32, settings, machine) != key
    assert latency_key(config, 16, dataclasses.replace(settings, threads=2), machine) != key
    assert latency_key(config, 16, settings, {**machine, "cpu": "another"}) != key


def test_onnxruntime_measures_fp32_and_int8_with_its_settings_recorded() -> None:
    pytest.importorskip("onnxruntime")
    config = ResNetConfig(stem=Stem(8), stages=(Stage(1, 8), Stage(1, 16)), num_classes=3)
    for precision in ("fp32", "int8"):
        settings = LatencyConfig(precision=precision, warmup=1, repeats=5, batch_size=2)  # type: ignore[arg-type]
        found = measure_latency(config, 16, settings)
        assert math.isfinite(found.median_ms) and 0 < found.p10_ms <= found.median_ms <= found.p90_ms
        assert found.settings["precision"] == precision and found.settings["batch_size"] == 2
        assert found.machine["runtime_version"] and found.seconds > 0
        assert LatencyMeasurement.from_dict(found.as_dict()) == found


# --------------------------------------------------------------------------- bad settings


FIXED = "model: {num_classes: 3, stem: {width: 8}, stages: [{blocks: 1, width: 8}]}\ndata: {image_size: 16}\n"


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ("{latency: {runtime: tensorrt}}", "budget.latency.runtime: 'tensorrt' is not one of ['onnxruntime', 'torch']"),
        ("{latency: {threads: 0}}", "budget.latency.threads: must be >= 1"),
        ("{latency: {runtime: torch, precision: int8}}", "budget.latency.precision: int8 is measured with onnxruntime"),
        ("{max_latency_ms: -1}", "budget.max_latency_ms: must be > 0"),
        ("{max_activation_kb: 0}", "budget.max_activation_kb: must be > 0"),
        ("{latency: {measure_on: head}}", "budget.latency.measure_on: 'head' is not one of ['driver', 'worker']"),
    ],
)
def test_bad_latency_settings_are_one_line_and_exit_2(
    tmp_path, capsys: pytest.CaptureFixture, budget: str, message: str
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(FIXED + f"budget: {budget}\n")
    assert main(["count", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{spec}: {message}" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_latency_on_a_missing_gpu_is_one_line_and_exit_2(tmp_path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "gpu.yaml"
    spec.write_text(FIXED + "budget: {latency: {runtime: torch, device: cuda}}\n")
    assert main(["count", str(spec)]) == 2
    err = capsys.readouterr().err
    expected = f"{spec}: budget.latency.device: cuda, but this machine has no CUDA GPU; measure on cpu or on a GPU"
    assert err == f"resnet-search: error: {expected}\n"


@pytest.mark.slow  # a real two-node Ray cluster
def test_measure_on_worker_measures_in_a_task_on_a_worker_node(ray_cluster, tmp_path) -> None:
    """The driver joins a head and a worker node; the measurement runs on the node that is not
    the driver's, and is cached with that node's machine."""
    code = f"""
import json, ray
from search.config import parse_spec
from search.engine.bridge import StudyBridge, TrialSetup
from search.engine.deployment import on_worker
from search.engine.samplers import create_study
ray.init(address={ray_cluster.address!r}, logging_level="ERROR")
spec = parse_spec('''{SPACE.format(limit=1e6, widths="[8]", objectives="{metric: val_acc}")}'''
                  .replace("repeats: 3", "repeats: 3, measure_on: worker"))
bridge = StudyBridge(create_study(spec, "sqlite:///{tmp_path}/w.db"), spec, TrialSetup(16))
job = bridge.next_job()
ran = on_worker(lambda: ray.get_runtime_context().get_node_id(), spec.budget.latency_settings)
print(json.dumps({{"job": job is not None, "measured": bridge.deployment.measured,
                  "here": ray.get_runtime_context().get_node_id(), "ran": ran,
                  "latency": bridge.study.get_trials()[0].user_attrs["latency_ms"]}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **ray_cluster.env}, timeout=300
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["job"] and found["measured"] == 1 and found["latency"] > 0
    assert found["ran"] != found["here"]


RUN = """
study: {{name: {name}, n_trials: 2, max_rejections: 3}}
data: {{dataset: imagefolder, val_fraction: 0.25, image_size: 32}}
model:
  num_classes: 3
  stem: {{width: 8}}
  stages: [{{blocks: 1, width: {{choice: [4, 8]}}}}]
train: {{epochs: 1, batch_size: 8, optimizer: {{name: sgd, lr: {{range: [0.01, 0.1], log: true}}}}}}
budget: {{max_latency_ms: {limit:f}, max_activation_kb: 1000, latency: {{runtime: torch, warmup: 1, repeats: 3}}}}
resources: {{cpu: 1, max_concurrent: 1}}
"""


def cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # a real (local) Ray
def test_a_run_measures_before_training_and_rejects_what_is_too_slow(tmp_path, tiny_imagefolder) -> None:
    (tmp_path / "fast.yaml").write_text(RUN.format(name="fast", limit=1e6))
    ran = cli(["run", "fast.yaml", "--data-dir", str(tiny_imagefolder), "--keep", "0"], tmp_path)
    assert ran.returncode == 0, ran.stderr
    study = optuna.load_study(study_name="fast", storage=f"sqlite:///{tmp_path}/studies/fast.db")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and all(t.user_attrs[LATENCY_MS] > 0 for t in complete)
    counted = cli(["count", "fast.yaml", "--json", "--samples", "20"], tmp_path)
    assert counted.returncode == 0, counted.stderr
    report = json.loads(counted.stdout)
    assert set(report["latency"]) == {"smallest", "largest"} and report["max_activation_kb"] == 1000
    assert report["smallest"]["activation_kb"]["fp32"] == 4 * report["smallest"]["activation_kb"]["int8"]

    (tmp_path / "slow.yaml").write_text(RUN.format(name="slow", limit=0.000001))
    ran = cli(["run", "slow.yaml", "--data-dir", str(tiny_imagefolder)], tmp_path)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert "slow.yaml: budget: 3 samples in a row were over the budget (latency " in ran.stderr
    study = optuna.load_study(study_name="slow", storage=f"sqlite:///{tmp_path}/studies/slow.db")
    assert len(study.trials) == 3
    for trial in study.trials:
        assert trial.state == TrialState.PRUNED and not trial.intermediate_values
        assert "ms > max 1e-06 ms" in trial.user_attrs[REJECTED] and trial.constraints["latency_ms"] > 0


def test_a_latency_image_size_the_model_does_not_fit_is_the_specs_error_or_a_rejection(
    tmp_path, capsys: pytest.CaptureFixture, storage: str
) -> None:
    spec = tmp_path / "small.yaml"
    spec.write_text(
        FIXED.replace("stem: {width: 8}", "stem: {width: 8}, pool_kernel: 16")
        + "budget: {latency: {runtime: torch, image_size: 8}}\n"
    )
    assert main(["count", str(spec)]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and f"{spec}: budget.latency.image_size: 8px does not fit the model: 16 is larger" in err
    )
    text = SPACE.format(limit=1e6, widths="[8]", objectives="{metric: val_acc}").replace(
        "repeats: 3", "repeats: 3, image_size: 8"
    )
    text = text.replace("stem: {width: 8}", "stem: {width: 8}\n  pool_kernel: 16")
    parsed = parse_spec(text, "fast.yaml")
    bridge = StudyBridge(create_study(parsed, storage), parsed, TrialSetup(16))
    assert bridge.next_job() is None
    assert all(
        t.user_attrs[REJECTED].startswith("budget.latency.image_size: 8px does not fit") for t in bridge.study.trials
    )
