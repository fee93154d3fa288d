"""Results of a search: studies, export (round trip through count and train), retrain and
its leaderboard, the HTML report in a real headless Chromium, the dashboard as a real
server, and bad input through the CLI.

Studies are made by the search's own :class:`StudyBridge` (budget rejections, pruning,
outcomes as in a real run) without Ray: ``trained_study`` really trains every trial on the
tiny image folder; ``quick_study`` reports made-up curves, for the tests about presentation.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.cli import main
from search.config import load_spec, parse_spec
from search.engine.bridge import StudyBridge, TrialSetup
from search.engine.samplers import create_study
from search.engine.trainable import TrialJob
from search.outputs.export import export_best
from search.outputs.report import write_report
from search.outputs.retrain import retrain
from search.outputs.studies import list_studies
from search.study.keys import LEADERBOARD, REJECTED, trial_status
from search.study.notes import write_trial_note
from search.study.trials import ranked_trials, study_spec, trial_config
from search.train.options import SeedOptions

SPEC = """
study:
  name: {name}
  n_trials: {n_trials}
  objectives: {objectives}
  sampler: {{name: {sampler}, n_startup_trials: 3}}
  pruner: {pruner}
data: {{dataset: imagefolder, image_size: 32, val_fraction: 0.25}}
model:
  num_classes: 3
  stem: {{width: 8}}
  stages:
    - {{blocks: {{range: [1, 2]}}, width: {{choice: [8, 16, 96]}}}}
    - {{blocks: 1, width: {{choice: [16, 24]}}}}
  se: {{name: {{choice: [none, blocks]}}, ratio: 4}}
train:
  epochs: 2
  batch_size: 8
  optimizer: {{name: sgd, lr: {{range: [0.001, 0.3], log: true}}}}
budget: {{max_params: 40000}}
"""
VAL_ACC = "[{metric: val_acc, direction: maximize}]"
TWO_OBJECTIVES = "[{metric: val_acc, direction: maximize}, {metric: params, direction: minimize}]"

Report = Callable[[dict], bool]


def spec_text(
    name: str,
    n_trials: int = 5,
    objectives: str = VAL_ACC,
    sampler: str = "tpe",
    pruner: str = "{name: median, n_startup_trials: 2, n_warmup_steps: 0}",
) -> str:
    return SPEC.format(name=name, n_trials=n_trials, objectives=objectives, sampler=sampler, pruner=pruner)


def run_study(storage: str, text: str, fit: Callable[[TrialJob, Report], dict]) -> optuna.Study:
    """Drive a study to its n_trials as ``resnet-search run`` does, with ``fit`` as the trainable."""
    spec = parse_spec(text, "tiny.yaml")
    study = create_study(spec, storage)
    study.enqueue_trial({"model.stages.0.width": 96})  # over the budget: the first sample is rejected
    bridge = StudyBridge(study, spec, TrialSetup(32))
    while (job := bridge.next_job()) is not None:
        final = fit(job, lambda result: bridge.report(job.number, result))
        bridge.finish(job.number, final, error=False)
    return study


def made_up_fit(job: TrialJob, report: Report) -> dict:
    """Curves that rise with the learning rate; trial 2 fails, as a crashed worker would."""
    if job.number == 2:
        return {"final": True, "error": "RuntimeError: made-up failure"}
    lr = job.trial.train.optimizer.lr
    result = {}
    for epoch in (1, 2):
        acc = min(0.99, 0.3 + lr * epoch)
        result = {"epoch": epoch, "val_acc": acc, "val_loss": 1 - acc}
        if report(result):
            return result
    return {**result, "epochs_run": 2, "train_time_s": 0.5}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def quick_study(workdir: Path) -> tuple[str, optuna.Study]:
    """A real study with made-up training results: complete, pruned, failed, rejected trials."""
    storage = f"sqlite:///{workdir / 'quick.db'}"
    return storage, run_study(storage, spec_text("quick", n_trials=6), made_up_fit)


@pytest.fixture(scope="module")
def fifty_study(workdir: Path) -> tuple[str, optuna.Study]:
    """50 trials with made-up results and no pruner (so over 20 complete): the report's size bound."""
    storage = f"sqlite:///{workdir / 'fifty.db'}"
    return storage, run_study(storage, spec_text("fifty", n_trials=50, pruner="{name: none}"), made_up_fit)


@pytest.fixture(scope="module")
def trained_study(workdir: Path, tiny_imagefolder: Path, _session_data_cache: Path) -> tuple[str, optuna.Study]:
    """A real study whose trials really train (2 epochs) on the tiny image folder."""
    from search.data import load_dataset
    from search.train import TrainOptions, train

    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse cache fixture is not active yet
        patch.setenv("RESNET_SEARCH_CACHE", str(_session_data_cache))
        data = load_dataset(parse_spec(spec_text("trained")).data, data_dir=tiny_imagefolder, download=False)

    def fit(job: TrialJob, report: Report) -> dict:
        last: dict = {}

        def on_epoch(m) -> bool:
            last.update(epoch=m.epoch, val_acc=m.val_acc, val_loss=m.val_loss)
            return report(dict(last))

        result = train(job.trial, data, TrainOptions(callback=on_epoch))
        if result.status == "stopped":
            return last
        return {
            "val_acc": result.final_val_acc,
            "val_loss": result.final_val_loss,
            "epochs_run": result.epochs_run,
            "train_time_s": result.train_time_s,
        }

    (workdir / "studies").mkdir(exist_ok=True)
    storage = f"sqlite:///{workdir / 'studies' / 'trained.db'}"
    return storage, run_study(storage, spec_text("trained", n_trials=4), fit)


def cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------- studies and export


def test_the_quick_study_has_every_kind_of_trial(quick_study) -> None:
    _, study = quick_study
    statuses = {trial_status(t) for t in study.trials}
    assert {"complete", "failed", "rejected"} <= statuses, statuses


def test_studies_lists_counts_by_state_and_the_best_value(quick_study) -> None:
    storage, study = quick_study
    (row,) = list_studies(storage)
    trials = study.trials
    assert row.name == "quick"
    assert row.counts["complete"] == sum(t.state == TrialState.COMPLETE for t in trials)
    assert row.counts["rejected"] == sum(REJECTED in t.user_attrs for t in trials)
    assert row.counts["failed"] == 1
    assert f"val_acc {study.best_value:.4g} (trial {study.best_trial.number})" == row.best
    assert row.started is not None and row.last is not None


def test_export_writes_only_complete_trials_best_first(quick_study, tmp_path: Path) -> None:
    storage, study = quick_study
    paths = export_best(study, storage, top=100, out_dir=tmp_path)
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.values[0])
    assert [p.name for p in paths] == [f"quick_trial{t.number}.yaml" for t in complete]
    provenance = yaml.safe_load(paths[0].read_text())["provenance"]
    best = complete[0]
    assert provenance["trial"] == best.number and provenance["values"] == {"val_acc": best.values[0]}
    assert provenance["search_params"] == best.params and provenance["params"] == best.user_attrs["params"]
    assert set(provenance["versions"]) == {"resnet-search", "torch", "optuna"}
    assert load_spec(paths[0]).fixed() == trial_config(study_spec(study), best)


def test_pareto_export_writes_the_front_of_a_multi_objective_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'pareto.db'}"
    study = run_study(
        storage,
        spec_text("pareto", n_trials=6, objectives=TWO_OBJECTIVES, sampler="nsgaii", pruner="{name: none}"),
        made_up_fit,
    )
    paths = export_best(study, storage, out_dir=tmp_path / "front", pareto=True)
    assert sorted(p.name for p in paths) == sorted(f"pareto_trial{t.number}.yaml" for t in study.best_trials)
    for path in paths:
        values = yaml.safe_load(path.read_text())["provenance"]["values"]
        assert set(values) == {"val_acc", "params"}


@pytest.mark.slow
def test_exported_configs_count_and_train_through_the_cli(
    trained_study, tiny_imagefolder: Path, workdir: Path, tmp_path: Path
) -> None:
    storage, study = trained_study
    exported = cli(["export", "--storage", storage, "--top", "2", "--out", str(tmp_path)], cwd=workdir)
    assert exported.returncode == 0, exported.stderr
    paths = [Path(line) for line in exported.stdout.split()]
    assert paths and all(p.is_file() for p in paths)
    by_number = {t.number: t for t in study.trials}
    for path in paths:
        trial = by_number[yaml.safe_load(path.read_text())["provenance"]["trial"]]
        assert trial.state == TrialState.COMPLETE
        counted = cli(["count", str(path), "--json"], cwd=tmp_path)
        assert counted.returncode == 0, counted.stderr
        # The exported config rebuilds the very model the trial trained.
        counts = json.loads(counted.stdout)
        assert (counts["params"], counts["flops"]) == (trial.user_attrs["params"], trial.user_attrs["flops"])
        trained = cli(
            [
                "train",
                str(path),
                "--epochs",
                "1",
                "--data-dir",
                str(tiny_imagefolder),
                "--out",
                str(tmp_path / path.stem),
            ],
            cwd=tmp_path,
        )
        assert trained.returncode == 0, trained.stderr
        metrics = json.loads((tmp_path / path.stem / "metrics.json").read_text())
        assert metrics["params"] == trial.user_attrs["params"] and metrics["epochs"] == 1


# --------------------------------------------------------------------------- retrain


def test_retrain_leaderboard_matches_the_per_seed_metrics(
    trained_study, tiny_imagefolder: Path, tmp_path: Path
) -> None:
    _, study = trained_study
    options = SeedOptions(
        seeds=(0, 1), epochs=1, data_dir=tiny_imagefolder, out_dir=tmp_path, device="cpu", log=lambda line: None
    )
    board = retrain(study, options, top=2)
    with board.csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(board.rows) == min(2, sum(t.state == TrialState.COMPLETE for t in study.trials))
    for row in rows:
        accs = [
            json.loads((tmp_path / f"trial{row['trial']}" / f"seed{s}" / "metrics.json").read_text())["test_acc"]
            for s in (0, 1)
        ]
        mean = sum(accs) / 2
        std = (sum((a - mean) ** 2 for a in accs) / 1) ** 0.5  # sample standard deviation
        assert float(row["test_acc_mean"]) == pytest.approx(mean)
        assert float(row["test_acc_std"]) == pytest.approx(std)
        assert row["seeds"] == "0 1"
    assert [float(r["test_acc_mean"]) for r in rows] == sorted((float(r["test_acc_mean"]) for r in rows), reverse=True)
    stored = optuna.load_study(study_name=study.study_name, storage=study._storage).user_attrs[LEADERBOARD]
    assert [r["trial"] for r in stored["rows"]] == [int(r["trial"]) for r in rows]
    page = write_report(study, "sqlite:///x.db", tmp_path).html.read_text()
    assert "Leaderboard (retrained)" in page
    winner = page.split("<section>")[1]  # the first section: the leaderboard's rank 1, with its spread
    assert f"#{stored['rows'][0]['trial']}," in winner and "over 2 seeds" in winner


# --------------------------------------------------------------------------- the report


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def test_report_leads_with_the_winner_and_stays_small_in_headless_chromium(fifty_study, tmp_path: Path) -> None:
    storage, study = fifty_study
    files = write_report(study, storage, tmp_path)
    page = files.html.read_text()
    # plotly.js is loaded once, from the file beside the page: nothing from elsewhere.
    assert re.findall(r'<script[^>]+src="([^"]+)"', page) == ["plotly.min.js"]
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    assert files.html.stat().st_size < 1_000_000, files.html.stat().st_size  # 50 trials, plotly.js apart
    frame_rows = list(csv.DictReader(files.csv.open()))
    assert len(frame_rows) == len(study.trials) and {r["status"] for r in frame_rows} >= {"rejected", "complete"}

    titles = re.findall(r"<section><h2>(.*?)</h2>", page)
    assert titles[0] == "The best trial"
    best = ranked_trials(study, 1)[0]
    winner = page.split("<section>")[1]
    assert f"#{best.number}, val_acc {best.values[0]:.4f}" in winner
    assert "blocks" in winner and "sgd lr" in winner and "of the 40,000 budget" in winner  # architecture, recipe, size
    assert "resnet-search export --storage" in winner and f"fifty_trial{best.number}.yaml" in winner
    assert "not measured yet" in winner  # no retrain: the test set is untouched
    complete = sum(t.state == TrialState.COMPLETE for t in study.trials)
    assert complete >= 20 and f"Hyperparameter importances (from {complete} complete trials)" in titles

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (apt-get install -y chromium)")
    process = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=http://127.0.0.1:9",  # no network at all
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            files.html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    console = [line for line in process.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # no JavaScript error, no failed load (the network is blocked)
    dom = process.stdout
    graphs = re.split(r'<div[^>]*class="[^"]*plotly-graph-div', dom)[1:]
    assert len(graphs) == files.figures >= 7  # the winner's curve and the importances too
    for graph in graphs:  # each segment runs to the next figure: its own plot must be drawn in it
        assert 'class="main-svg"' in graph


def test_the_winner_names_its_kept_model_folder_and_the_commands_that_use_it(tmp_path: Path) -> None:
    from search.study.records import set_kept_models

    storage = f"sqlite:///{tmp_path / 'kept.db'}"
    study = run_study(storage, spec_text("kept", n_trials=4), made_up_fit)
    best = ranked_trials(study, 1)[0]
    folder = tmp_path / "models" / f"trial_{best.number}"
    folder.mkdir(parents=True)
    set_kept_models(study, {best.number: folder})
    page = write_report(study, storage, tmp_path).html.read_text()
    winner = page.split("<section>")[1]
    assert f"resnet-search predict {folder} IMAGE..." in winner and f"resnet-search evaluate {folder}" in winner


def test_report_of_few_trials_says_why_it_shows_no_importances(quick_study, tmp_path: Path) -> None:
    storage, study = quick_study
    page = write_report(study, storage, tmp_path).html.read_text()
    complete = sum(t.state == TrialState.COMPLETE for t in study.trials)
    assert complete < 20
    assert f"importances from {complete} complete trial(s) would be noise" in page


def test_report_of_a_study_without_results_is_a_user_error(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    study = create_study(parse_spec(spec_text("empty")), storage)
    with pytest.raises(Exception, match="no complete trial"):
        write_report(study, storage, tmp_path)


# --------------------------------------------------------------------------- the dashboard


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_annotate_trial_writes_the_architecture_note(quick_study) -> None:
    from optuna_dashboard import get_note

    _, study = quick_study
    trial = next(t for t in study.trials if t.state == TrialState.COMPLETE)
    write_trial_note(study, trial)
    note = get_note(optuna.Trial(study, trial._trial_id))
    assert f"{trial.user_attrs['params']:,} params" in note and "stages" in note and "MFLOPs" in note


def non_loopback_address() -> str:
    """This host's address on its network (where a server bound to all interfaces would answer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this host has no network address besides the loopback")
    return address


@pytest.mark.slow
def test_dashboard_serves_the_study_and_stops_on_ctrl_c(quick_study, workdir: Path) -> None:
    storage, study = quick_study
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "dashboard", "--storage", storage, "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # printed once the port is bound and the notes written
        assert f"http://127.0.0.1:{port}/dashboard/" in line, (line, process.stderr.read() if process.poll() else "")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as response:
            summaries = json.load(response)["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["quick"]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{summaries[0]['study_id']}", timeout=30
        ) as response:
            detail = json.load(response)
        complete = [t for t in detail["trials"] if t["state"] == "Complete"]
        assert complete and all("params" in t["note"]["body"] for t in complete)
        assert "learning_curves" in {g["id"] for g in detail["plotly_graph_objects"]}
        with pytest.raises(ConnectionRefusedError):  # bound to the loopback only, not this host's address
            socket.create_connection((non_loopback_address(), port), timeout=5).close()
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    with pytest.raises(ConnectionRefusedError):  # nobody listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with socket.socket() as again:  # and a new server can bind it (TIME_WAIT leftovers allowed, as servers do)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def empty_storage(workdir: Path) -> str:
    storage = f"sqlite:///{workdir / 'empty.db'}"
    create_study(parse_spec(spec_text("nothing_yet")), storage)
    return storage


def bad_inputs(quick: str, empty: str, busy_port: int) -> list[tuple[list[str], str]]:
    secret = "postgresql://alice:s3cret@127.0.0.1:9/optuna"
    return [
        (["export", "--storage", "redis://localhost/0"], "unknown scheme 'redis'"),
        # Without psycopg (the postgres extra) the same URL fails for its missing driver.
        (["report", "--storage", secret], "cannot connect|database driver is missing"),
        (["studies", "--storage", secret], "cannot connect|database driver is missing"),
        (["export", "--storage", "sqlite:///no/such.db"], "no such database file"),
        (["export", "--storage", quick, "--study", "nope"], "no study 'nope'; studies there: quick$"),
        (["export", "--storage", quick, "--top", "0"], "--top: must be a whole number >= 1"),
        (["retrain", "--storage", quick, "--top", "0"], "--top: must be a whole number >= 1"),
        (["export", "--storage", empty], "no complete trial"),
        (["retrain", "--storage", empty, "--top", "1"], "no complete trial"),
        (["report", "--storage", empty], "no complete trial"),
        (["export", "--storage", quick, "--pareto"], "--pareto needs a multi-objective study"),
        (["dashboard", "--storage", quick, "--port", str(busy_port)], f"port {busy_port} on 127.0.0.1 is in use"),
        (["studies"], r"no studies/\*\.db under"),
    ]


def run_main(args: list[str]) -> int | str | None:
    """The CLI's exit status, whether it returns one or argparse exits with it."""
    try:
        return main(args)
    except SystemExit as exit_:
        return exit_.code


def test_bad_input_is_one_line_and_exit_2(
    quick_study, empty_storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # no studies/ here
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        for args, expected in bad_inputs(quick_study[0], empty_storage, busy.getsockname()[1]):
            code = run_main(args)
            out, err = capsys.readouterr()
            assert code == 2, (args, out, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("resnet-search"), (args, err)
            assert "error:" in lines[0] and re.search(expected, lines[0]), (args, err)
            assert "s3cret" not in out + err and "Traceback" not in err


def test_bad_input_through_the_installed_command(quick_study, workdir: Path) -> None:
    process = cli(["export", "--storage", quick_study[0], "--study", "nope"], cwd=workdir, timeout=120)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        f"resnet-search: error: storage {quick_study[0]}: no study 'nope'; studies there: quick"
    ]
