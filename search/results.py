"""Results of a search: list studies, export the best configs, retrain the winners, and
serve optuna-dashboard with a note on every trial.

Every function takes an Optuna storage URL or study and raises :class:`UserError` for
input a user can fix. The HTML report lives in :mod:`search.report`. A study's trials are
rebuilt from the spec text the search stored on it (``study.user_attrs["spec"]``), so
nothing here needs the original spec file.
"""

from __future__ import annotations

import csv
import datetime as dt
import errno
import importlib.metadata
import math
import signal
import socket
import statistics
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from search import __version__
from search.config import SpecError, UserError
from search.records import ERROR, INTERRUPTED, REJECTED, SPEC_SOURCE, SPEC_TEXT
from search.config import ResNetConfig, Spec, TrialConfig, fixed_document, parse_spec
from search.storage import STUDIES_DIR, default_storage, mask_password, open_storage, study_dir

Log = Callable[[str], None]

LEADERBOARD = "leaderboard"  # study user attribute written by retrain, shown by the report
LEARNING_CURVES_ID = "learning_curves"  # the dashboard's custom plot of all trials' curves
STATUSES = ("complete", "pruned", "failed", "rejected", "running", "waiting")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


# --------------------------------------------------------------------------- storages and studies


def resolve_storage(storage: str | None, study_name: str | None = None) -> str:
    """The storage URL a command works on.

    Args:
        storage: The ``--storage`` flag; wins when given.
        study_name: The ``--study`` flag: picks ``studies/<name>.db`` when that file exists.

    Returns:
        ``storage``, else ``sqlite:///studies/<study>.db``, else the only ``studies/*.db``.

    Raises:
        UserError: no flag and no single database file under ``studies/`` to fall back on.
    """
    if storage:
        return storage
    if study_name and (STUDIES_DIR / f"{study_name}.db").is_file():
        return default_storage(study_name)
    found = sorted(STUDIES_DIR.glob("*.db"))
    if len(found) == 1:
        return f"sqlite:///{found[0]}"
    if not found:
        raise UserError(f"no studies/*.db under {Path.cwd()}; pass --storage URL")
    names = ", ".join(path.name for path in found)
    raise UserError(f"several storages under studies/ ({names}); pass --storage URL or --study NAME")


def open_existing_storage(url: str) -> optuna.storages.BaseStorage:
    """Open a storage that must already exist: reading a result never creates a database.

    Raises:
        UserError: unknown scheme, a missing SQLite/journal file, or an unreachable database.
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme in ("sqlite", "journal") and "://" in url:
        path = url.split("://", 1)[1]
        path = path[1:] if scheme == "sqlite" else path  # sqlite:///rel.db, sqlite:////abs.db
        if path and path != ":memory:" and not Path(path).is_file():
            raise UserError(f"storage {mask_password(url)}: no such database file {path}")
    return open_storage(url)


def load_study(storage_url: str, study_name: str | None = None) -> optuna.Study:
    """Load a study by name; without a name, the storage's only study.

    Raises:
        UserError: the storage cannot be opened, the study does not exist (the message lists
            those that do), or no name was given and the storage holds none or several.
    """
    storage = open_existing_storage(storage_url)
    names = optuna.study.get_all_study_names(storage)
    where = mask_password(storage_url)
    if study_name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise UserError(f"storage {where} holds {len(names)} studies ({listed}); pick one with --study NAME")
        study_name = names[0]
    elif study_name not in names:
        listed = ", ".join(names) if names else "none"
        raise UserError(f"storage {where}: no study {study_name!r}; studies there: {listed}")
    return optuna.load_study(study_name=study_name, storage=storage)


def trial_status(trial: FrozenTrial) -> str:
    """``complete``, ``pruned``, ``failed``, ``rejected`` (over budget, never trained), ``running``, ``waiting``."""
    if trial.state == TrialState.PRUNED and REJECTED in trial.user_attrs:
        return "rejected"
    return {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }[trial.state]


def status_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """How many trials have each status, every status listed (zeros included)."""
    counts = Counter(trial_status(t) for t in trials)
    return {status: counts.get(status, 0) for status in STATUSES}


def metric_names(study: optuna.Study) -> list[str]:
    """The objectives' metric names (``val_acc``...), or ``value0``... for studies without names."""
    return list(study.metric_names or [f"value{i}" for i in range(len(study.directions))])


def study_spec(study: optuna.Study) -> Spec:
    """The spec the study was searched with, parsed from the text stored on it.

    Raises:
        UserError: the study was not made by ``resnet-search run`` (no spec stored).
    """
    text = study.user_attrs.get(SPEC_TEXT)
    if text is None:
        raise UserError(f"study {study.study_name} has no stored spec (user attribute {SPEC_TEXT!r}): "
                        "it was not made by resnet-search run")
    return parse_spec(text, study.user_attrs.get(SPEC_SOURCE) or f"study {study.study_name}")


def trial_config(spec: Spec, trial: FrozenTrial) -> TrialConfig:
    """The fixed config a trial trained: its Optuna parameters replayed through the spec's space."""
    return spec.space.sample(optuna.trial.FixedTrial(trial.params, trial.number))


def ranked_trials(study: optuna.Study, top: int, pareto: bool = False) -> list[FrozenTrial]:
    """The best ``top`` COMPLETE trials by the first objective, or the whole Pareto front.

    Rejected, pruned and failed trials never qualify: only COMPLETE ones have results.

    Raises:
        UserError: ``top`` < 1, no complete trial, or ``pareto`` on a single-objective study.
    """
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        counts = ", ".join(f"{n} {s}" for s, n in status_counts(trials).items() if n) or "no trials"
        raise UserError(f"study {study.study_name} has no complete trial yet ({counts})")
    if pareto:
        if len(study.directions) < 2:
            raise UserError(f"study {study.study_name} has one objective: --pareto needs a multi-objective study")
        return sorted(study.best_trials, key=lambda t: t.number)
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(complete, key=lambda t: (sign * t.values[0], t.number))[:top]


# --------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class StudyRow:
    """One line of ``resnet-search studies``."""

    storage: str  # masked
    name: str
    counts: dict[str, int]
    best: str
    started: dt.datetime | None
    last: dt.datetime | None


def list_studies(storage: str | None = None) -> list[StudyRow]:
    """Every study in a storage, or in every ``studies/*.db`` when no storage is given.

    Raises:
        UserError: the storage cannot be opened, or no storage was given and none found.
    """
    if storage:
        urls = [storage]
    else:
        urls = [f"sqlite:///{path}" for path in sorted(STUDIES_DIR.glob("*.db"))]
        if not urls:
            raise UserError(f"no studies/*.db under {Path.cwd()}; pass --storage URL")
    rows = []
    for url in urls:
        backend = open_existing_storage(url)
        for name in optuna.study.get_all_study_names(backend):
            study = optuna.load_study(study_name=name, storage=backend)
            trials = study.get_trials(deepcopy=False)
            starts = [t.datetime_start for t in trials if t.datetime_start]
            ends = [t.datetime_complete for t in trials if t.datetime_complete]
            rows.append(StudyRow(mask_password(url), name, status_counts(trials), _best_text(study, trials),
                                 min(starts, default=None), max(ends, default=None)))
    return rows


def _best_text(study: optuna.Study, trials: Sequence[FrozenTrial]) -> str:
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return "-"
    if len(study.directions) > 1:
        return f"{len(study.best_trials)} on the Pareto front"
    return f"{metric_names(study)[0]} {study.best_value:.4g} (trial {study.best_trial.number})"


def studies_table(rows: Sequence[StudyRow]) -> str:
    """``rows`` as a fixed-width text table."""
    def when(value: dt.datetime | None) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value else "-"

    header = ["storage", "study", "complete", "pruned", "failed", "rejected", "running", "best", "started", "last"]
    lines = [[r.storage, r.name, *(str(r.counts[s]) for s in STATUSES[:5]), r.best, when(r.started), when(r.last)]
             for r in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *lines])


# --------------------------------------------------------------------------- export


def export_best(
    study: optuna.Study,
    storage_url: str,
    *,
    top: int = 1,
    out_dir: str | Path | None = None,
    pareto: bool = False,
) -> list[Path]:
    """Write the best trials' configs as fixed spec files, ``<study>_trial<N>.yaml``.

    Each file trains with ``resnet-search train`` and counts with ``resnet-search count``;
    its ``provenance`` says where it came from (storage password masked).

    Args:
        study: A study made by ``resnet-search run``.
        storage_url: Its storage, recorded (masked) in the provenance.
        top: How many of the best COMPLETE trials (by the first objective).
        out_dir: Folder for the files; default ``studies/<study>/export``.
        pareto: Write the Pareto front of a multi-objective study instead (``top`` is ignored).

    Returns:
        The files written, best first (Pareto front: by trial number).

    Raises:
        UserError: see :func:`ranked_trials`; the study has no stored spec.
    """
    trials = ranked_trials(study, top, pareto)
    spec = study_spec(study)
    out = Path(out_dir) if out_dir is not None else study_dir(study.study_name) / "export"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for trial in trials:
        document = fixed_document(spec, trial_config(spec, trial), provenance(study, storage_url, trial))
        path = out / f"{study.study_name}_trial{trial.number}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        paths.append(path)
    return paths


def provenance(study: optuna.Study, storage_url: str, trial: FrozenTrial) -> dict[str, Any]:
    """Where an exported config came from: study, storage (masked), trial, results, versions."""
    date = trial.datetime_complete or trial.datetime_start
    return {
        "study": study.study_name,
        "storage": mask_password(storage_url),
        "spec_source": study.user_attrs.get(SPEC_SOURCE),
        "trial": trial.number,
        "values": dict(zip(metric_names(study), trial.values)),
        "search_params": dict(trial.params),
        "params": trial.user_attrs.get("params"),
        "flops": trial.user_attrs.get("flops"),
        "date": date.isoformat(timespec="seconds") if date else None,
        "versions": {
            "resnet-search": __version__,
            "torch": _version("torch"),  # from metadata: exporting should not import torch
            "optuna": optuna.__version__,
        },
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- retrain


@dataclass(frozen=True)
class LeaderboardRow:
    """One retrained config: its search result and the test accuracy over seeds."""

    rank: int
    trial: int
    search_value: float
    params: int
    flops: int | None
    seeds: list[int]
    test_acc: list[float | None]  # per seed; None where the run diverged
    test_acc_mean: float | None
    test_acc_std: float | None
    train_time_s_mean: float
    out_dir: str


@dataclass(frozen=True)
class Leaderboard:
    """What ``retrain`` did; ``csv_path`` is ``leaderboard.csv`` in its output folder."""

    study: str
    metric: str
    epochs: int | None
    rows: list[LeaderboardRow]
    csv_path: Path

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, as stored on the study (user attribute ``leaderboard``)."""
        return {"study": self.study, "metric": self.metric, "epochs": self.epochs,
                "date": dt.datetime.now().isoformat(timespec="seconds"),
                "rows": [asdict(row) for row in self.rows]}

    def table(self) -> str:
        lines = [f"{'rank':>4}  {'trial':>5}  {self.metric:>9}  {'test_acc':>16}  {'params':>11}  {'FLOPs':>15}  time/seed"]
        for r in self.rows:
            acc = "-" if r.test_acc_mean is None else f"{r.test_acc_mean:.2%} +- {r.test_acc_std:.2%}"
            flops = "-" if r.flops is None else f"{r.flops:,}"
            lines.append(f"{r.rank:>4}  {r.trial:>5}  {r.search_value:>9.4f}  {acc:>16}  {r.params:>11,}  "
                         f"{flops:>15}  {r.train_time_s_mean:.1f} s")
        return "\n".join(lines + ["", f"leaderboard: {self.csv_path}"])


CSV_COLUMNS = ("rank", "trial", "search_value", "test_acc_mean", "test_acc_std", "params", "flops",
               "train_time_s_mean", "seeds", "test_acc")


def retrain(
    study: optuna.Study,
    *,
    top: int,
    seeds: Sequence[int] = (0,),
    epochs: int | None = None,
    data_dir: str | Path | None = None,
    download: bool = True,
    out_dir: str | Path | None = None,
    device: str | None = None,
    log: Log = print,
) -> Leaderboard:
    """Retrain the best ``top`` configs from scratch on train+val, once per seed, and test them.

    Each run writes ``metrics.json``, ``history.csv`` and ``curves.html`` to
    ``<out>/trial<N>/seed<S>``; the leaderboard (ranked by mean test accuracy) goes to
    ``<out>/leaderboard.csv`` and onto the study (user attribute ``leaderboard``).

    Args:
        study: A study made by ``resnet-search run``.
        top: How many of the best COMPLETE trials.
        seeds: Training seeds (``train.seed``) per config.
        epochs: Overrides each config's ``train.epochs``.
        data_dir: Dataset location (beats the spec's ``data.root``).
        download: Whether a known dataset found nowhere may be downloaded.
        out_dir: Output folder; default ``runs/<study>/retrain``.
        device: ``cuda`` or ``cpu``; default CUDA when available.
        log: Receives one progress line per epoch.

    Returns:
        The leaderboard.

    Raises:
        UserError: see :func:`ranked_trials`; no seeds; data that cannot be found or does not fit.
    """
    import torch  # heavy: only retraining needs it

    from search.data import load_dataset
    from search.train import ProgressPrinter, train, write_outputs

    if not seeds:
        raise UserError("--seeds needs at least one seed")
    trials = ranked_trials(study, top)
    spec = study_spec(study)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    data = load_dataset(spec.data, data_dir=data_dir, download=download)
    train_split = data.train_plus_val()  # the final fit uses every non-test image
    out = Path(out_dir) if out_dir is not None else Path("runs") / study.study_name / "retrain"
    rows = []
    for trial in trials:
        config = trial_config(spec, trial)
        accs, times, params = [], [], 0
        for seed in seeds:
            run = replace(config, train=replace(config.train, seed=seed))
            total = epochs or run.train.epochs
            result = train(run, data, device=device, epochs=epochs, train_split=train_split, evaluate_test=True,
                           callback=ProgressPrinter(total, log=log, prefix=f"trial {trial.number} seed {seed}: "))
            params = sum(p.numel() for p in result.model.parameters()) if result.model is not None else 0
            write_outputs(result, out / f"trial{trial.number}" / f"seed{seed}", config_dict=asdict(run), params=params)
            accs.append(result.test_acc)
            times.append(result.train_time_s)
        finite = [a for a in accs if a is not None and math.isfinite(a)]
        rows.append(LeaderboardRow(
            rank=0, trial=trial.number, search_value=trial.values[0], params=params,
            flops=trial.user_attrs.get("flops"), seeds=list(seeds), test_acc=accs,
            test_acc_mean=statistics.fmean(finite) if finite else None,
            test_acc_std=(statistics.stdev(finite) if len(finite) > 1 else 0.0) if finite else None,
            train_time_s_mean=statistics.fmean(times), out_dir=str(out / f"trial{trial.number}"),
        ))
    # Diverged configs (no test accuracy) rank last.
    rows.sort(key=lambda r: (r.test_acc_mean is None, -(r.test_acc_mean or 0.0), r.trial))
    rows = [replace(row, rank=i + 1) for i, row in enumerate(rows)]
    board = Leaderboard(study.study_name, metric_names(study)[0], epochs, rows, out / "leaderboard.csv")
    _write_leaderboard_csv(board)
    study.set_user_attr(LEADERBOARD, board.as_dict())
    return board


def _write_leaderboard_csv(board: Leaderboard) -> None:
    board.csv_path.parent.mkdir(parents=True, exist_ok=True)
    with board.csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in board.rows:
            record = asdict(row)
            record["seeds"] = " ".join(map(str, row.seeds))
            record["test_acc"] = " ".join("nan" if a is None else repr(a) for a in row.test_acc)
            writer.writerow({key: record[key] for key in CSV_COLUMNS})


# --------------------------------------------------------------------------- dashboard notes


def architecture_line(config: TrialConfig, params: int | None, flops: int | None) -> str:
    """One line: stages, blocks, widths, block type, SE, parameters and FLOPs."""
    model = config.model
    if isinstance(model, ResNetConfig):
        se = "no SE" if model.se.name == "none" else f"SE {model.se.name} 1/{model.se.ratio}"
        shape = (f"{len(model.stages)} stages, blocks {'-'.join(str(s.blocks) for s in model.stages)}, "
                 f"widths {'/'.join(str(s.width) for s in model.stages)}, stem {model.stem.width}, "
                 f"{model.block}{' preact' if model.preact else ''}, {se}")
    else:
        shape = f"{model.name}, freeze {model.freeze}, weights {model.weights or 'none'}"
    size = [f"{params:,} params" if params is not None else None, f"{format_flops(flops)}" if flops else None]
    return ", ".join([shape, *[s for s in size if s]])


def recipe_line(config: TrialConfig) -> str:
    """One line: optimizer and LR, schedule, batch size, epochs."""
    t = config.train
    return (f"{t.optimizer.name} lr {t.optimizer.lr:.3g} wd {t.optimizer.weight_decay:.2g}, {t.scheduler.name}, "
            f"batch {t.batch_size}, {t.epochs} epochs")


def format_flops(flops: int | None) -> str:
    if flops is None:
        return "-"
    for unit, scale in (("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops} FLOPs"


def trial_note(study: optuna.Study, trial: FrozenTrial, spec: Spec | None) -> str:
    """The Markdown note optuna-dashboard shows for ``trial``."""
    status = trial_status(trial)
    head = f"**{status}**"
    if trial.values:
        head += " · " + ", ".join(f"{m} {v:.4g}" for m, v in zip(metric_names(study), trial.values))
    attrs = trial.user_attrs
    if "epochs_run" in attrs:
        head += f" · {attrs['epochs_run']} epochs"
    if attrs.get("train_time_s") is not None:
        head += f" · {attrs['train_time_s']:.0f} s"
    lines = [head, ""]
    config = None
    if spec is not None:
        try:
            config = trial_config(spec, trial)
        except ValueError:  # a sample the space rejected part-way has no complete config
            config = None
    if config is not None:
        lines += [f"`{architecture_line(config, attrs.get('params'), attrs.get('flops'))}`", "",
                  recipe_line(config), ""]
    for key, label in ((REJECTED, "rejected for the budget, never trained"), (ERROR, "error"),
                       (INTERRUPTED, "interrupted")):
        if key in attrs:
            lines.append(f"{label}: {attrs[key]}")
    return "\n".join(lines).strip() + "\n"


def annotate_trial(
    study: optuna.Study, trial: FrozenTrial, *, curves: bool = True, spec: Spec | None = None
) -> bool:
    """Write ``trial``'s note for optuna-dashboard (architecture and recipe in one line each)
    and, with ``curves``, refresh the study's learning-curves plot (all trials, pruned marked).

    The search calls this after each trial; it replaces an earlier note of the trial.

    Args:
        study: The trial's study (a live :class:`optuna.Study`: notes are written through it).
        trial: The finished trial.
        curves: Also rewrite the study-level learning-curves figure (one write of its JSON).
        spec: The study's spec, where the caller holds it (the search does): saves parsing
            the stored spec text again for every trial.

    Returns:
        False when the study has no stored spec (not made by ``resnet-search run``): the note
        then holds the trial's status and results only.
    """
    from optuna_dashboard import save_note

    if spec is None:
        try:
            spec = study_spec(study)
        except (UserError, SpecError):
            spec = None
    # optuna_dashboard.save_note wants a live Trial; any finished one can be reopened by id.
    save_note(optuna.Trial(study, trial._trial_id), trial_note(study, trial, spec))
    if curves:
        save_learning_curves(study)
    return spec is not None


def save_learning_curves(study: optuna.Study) -> None:
    """Store the learning curves of all trials as the dashboard's custom plot ``learning_curves``."""
    from optuna_dashboard import save_plotly_graph_object

    from search.report import learning_curves_figure  # plotly is slow to import: only here

    figure = learning_curves_figure(study, compact=True)
    save_plotly_graph_object(study, figure, graph_object_id=LEARNING_CURVES_ID)


def annotate_missing(study: optuna.Study) -> int:
    """Annotate the finished trials that have no note yet; refresh the learning curves once.

    Returns:
        How many notes were written.
    """
    from optuna_dashboard import get_note

    written = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state.is_finished() and not get_note(optuna.Trial(study, trial._trial_id)):
            annotate_trial(study, trial, curves=False)
            written += 1
    if study.get_trials(deepcopy=False):
        save_learning_curves(study)
    return written


# --------------------------------------------------------------------------- dashboard


def serve_dashboard(
    storage_url: str,
    *,
    study_name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    log: Log = print,
    warn: Log = lambda line: print(line, file=sys.stderr),
) -> None:
    """Serve optuna-dashboard on a storage until Ctrl-C, after annotating unnoted trials.

    The storage is only read while serving (notes are written before), so a search may
    keep writing to it (SQLite included).

    Args:
        storage_url: An existing Optuna storage.
        study_name: Annotate only this study and print its page's address; default all.
        host: Interface to bind; anything but the loopback gets a warning (no authentication).
        port: TCP port; 0 picks a free one (the printed address says which).
        log: Receives the address line.
        warn: Receives warnings.

    Raises:
        UserError: bad storage or study, or the port cannot be bound (in use, not allowed).
    """
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
    from socketserver import ThreadingMixIn

    import optuna_dashboard

    storage = open_existing_storage(storage_url)
    studies = [load_study(storage_url, study_name)] if study_name else [
        optuna.load_study(study_name=name, storage=storage) for name in optuna.study.get_all_study_names(storage)
    ]

    class Server(ThreadingMixIn, WSGIServer):  # optuna-dashboard's own CLI serves the same way
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:  # one line per request would bury ours
            pass

    try:  # bind first: a port in use fails before anything is written
        server = make_server(host, port, optuna_dashboard.wsgi(storage), server_class=Server,
                             handler_class=QuietHandler)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use; pick another with --port") from None
        raise UserError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None
    try:
        if host not in LOCAL_HOSTS:
            warn(f"resnet-search: warning: serving on {host}: anyone who can reach it can read and edit "
                 "these studies (optuna-dashboard has no login)")
        for study in studies:
            try:
                annotate_missing(study)
            except Exception as error:  # notes are a convenience: a busy database must not stop the dashboard
                warn(f"resnet-search: warning: could not annotate study {study.study_name}: {error}")
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{server.server_port}/dashboard/"
        if study_name:
            url += f"studies/{studies[0]._study_id}"
        log(f"optuna-dashboard {optuna_dashboard.__version__} on {mask_password(storage_url)}: {url}  (Ctrl-C stops it)")
        _stop_on_signals()
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _stop_on_signals() -> None:
    """Make Ctrl-C and SIGTERM stop the server cleanly (its port freed), even when the shell
    started us in the background with SIGINT ignored."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

