"""``resnet-search retrain``: the best configs trained again from scratch on train+val, once per
seed, tested, and ranked in a leaderboard stored on the study."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from search.config import Spec, TrialConfig, UserError
from search.config.files import check_output_folder, write_text
from search.engine.events import Log
from search.study.keys import FLOPS, LEADERBOARD, metric_names
from search.study.storage import safe_study_name
from search.study.trials import ranked_trials, study_spec, trial_config

if TYPE_CHECKING:  # torch loads only once retraining starts
    import torch

    from search.data import ImageDataset
    from search.data.fingerprint import DataRecord
    from search.train.options import SeedOptions


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
    test_acc_std: float | None  # None with fewer than two seeds that trained: one value has no spread
    train_time_s_mean: float
    out_dir: str

    @property
    def trained_seeds(self) -> int:
        """Seeds whose run trained to a test accuracy (a diverged one has none)."""
        return sum(acc is not None and math.isfinite(acc) for acc in self.test_acc)


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
        return {
            "study": self.study,
            "metric": self.metric,
            "epochs": self.epochs,
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "rows": [asdict(row) for row in self.rows],
        }

    def table(self) -> str:
        lines = [
            f"{'rank':>4}  {'trial':>5}  {self.metric:>9}  {'test_acc':>16}  {'params':>11}  {'FLOPs':>15}  time/seed"
        ]
        for r in self.rows:
            acc = accuracy_text(r.test_acc_mean, r.test_acc_std, r.trained_seeds, sign="+-")
            flops = "-" if r.flops is None else f"{r.flops:,}"
            lines.append(
                f"{r.rank:>4}  {r.trial:>5}  {r.search_value:>9.4f}  {acc:>16}  {r.params:>11,}  "
                f"{flops:>15}  {r.train_time_s_mean:.1f} s"
            )
        folders = [
            f"model folder: {Path(r.out_dir) / f'seed{seed}'}"
            for r in self.rows
            for seed, acc in zip(r.seeds, r.test_acc)
            if acc is not None
        ]
        return "\n".join([*lines, "", f"leaderboard: {self.csv_path}", *folders])


def accuracy_text(mean: float | None, std: float | None, seeds: int, sign: str = "±") -> str:
    """``46.21% ± 0.52%`` over ``seeds`` seeds that trained, ``46.21% (1 seed)`` for one (one
    value has no spread), ``-`` for none."""
    if mean is None or seeds < 1:
        return "-"
    return f"{mean:.2%} (1 seed)" if seeds < 2 or std is None else f"{mean:.2%} {sign} {std:.2%}"


CSV_COLUMNS = (
    "rank",
    "trial",
    "search_value",
    "test_acc_mean",
    "test_acc_std",
    "params",
    "flops",
    "train_time_s_mean",
    "seeds",
    "test_acc",
)


def retrain(study: optuna.Study, options: SeedOptions | None = None, *, top: int) -> Leaderboard:
    """Retrain the best ``top`` configs from scratch on train+val, once per seed, and test them.

    Each run writes a model folder (:mod:`search.train.model_folder`) to
    ``<out>/trial<N>/seed<S>``; the leaderboard (ranked by mean test accuracy) goes to
    ``<out>/leaderboard.csv`` and onto the study (user attribute ``leaderboard``). Without
    ``data_dir`` the study's recorded data is used, and refused if it moved or changed.

    Args:
        study: A study made by ``resnet-search run``.
        options: The data, epochs, seeds, output folder, device and log
            (:class:`~search.train.options.SeedOptions`, the flags ``retrain`` shares with
            ``train``); default: all defaults (the study's recorded data, each config's own
            ``train.seed`` and ``train.epochs``, ``runs/<study>/retrain``).
        top: How many of the best COMPLETE trials.

    Returns:
        The leaderboard.

    Raises:
        UserError: ``out_dir`` cannot be written (checked first); see :func:`ranked_trials`; no
            seeds; data that cannot be found or does not fit; recorded data that moved or changed.
    """
    from search.study.records import study_data
    from search.train.options import SeedOptions  # torch: only retraining needs it
    from search.train.recipe import default_device

    options = options or SeedOptions()
    seeds, epochs, log = options.seeds, options.epochs, options.log
    if seeds is not None and not seeds:
        raise UserError("seeds= needs at least one seed")
    given = check_output_folder(options.out_dir) if options.out_dir is not None else None
    trials = ranked_trials(study, top)
    spec = study_spec(study)
    where = default_device(options.device)
    data, record = study_data(study, spec, options.data_dir, download=options.download, log=log)
    out = given or Path("runs") / safe_study_name(study.study_name) / "retrain"
    how: dict[str, Any] = {"epochs": epochs, "device": where, "log": log}
    rows = []
    for trial in trials:
        config = trial_config(spec, trial)
        trial_seeds = tuple(seeds) if seeds is not None else (config.train.seed,)
        runs = [
            _retrain_seed(spec, trial, replace(config, train=replace(config.train, seed=s)), data, record, out, **how)
            for s in trial_seeds
        ]
        rows.append(_row(trial, trial_seeds, runs, out / f"trial{trial.number}"))
    # Diverged configs (no test accuracy) rank last.
    rows.sort(key=lambda r: (r.test_acc_mean is None, -(r.test_acc_mean or 0.0), r.trial))
    rows = [replace(row, rank=i + 1) for i, row in enumerate(rows)]
    board = Leaderboard(study.study_name, metric_names(study)[0], epochs, rows, out / "leaderboard.csv")
    _write_leaderboard_csv(board)
    study.set_user_attr(LEADERBOARD, board.as_dict())
    return board


def _retrain_seed(
    spec: Spec,
    trial: FrozenTrial,
    run: TrialConfig,
    data: ImageDataset,
    record: DataRecord,
    out: Path,
    *,
    epochs: int | None,
    device: torch.device,
    log: Log,
) -> tuple[float | None, float, int]:
    """Train one seed's config on train+val, test it, and write its model folder
    (``<out>/trial<N>/seed<S>``; a diverged run writes its metrics only).

    Returns:
        The test accuracy (None if the run diverged), the training time and the parameter count.
    """
    from search.train.model_folder import ModelSource
    from search.train.seeds import SeedRun, train_seed

    seed = run.train.seed
    result = train_seed(
        SeedRun(
            spec,
            run,
            data,
            out / f"trial{trial.number}" / f"seed{seed}",
            ModelSource(study=spec.study.name, trial=trial.number, trained_on="train+val", data=record),
            device,
            epochs=epochs,
            train_split=data.train_plus_val(),  # the final fit uses every non-test image
            prefix=f"trial {trial.number} seed {seed}: ",
        ),
        log,
    )
    params = sum(p.numel() for p in result.model.parameters()) if result.model is not None else 0
    return result.test_acc, result.train_time_s, params


def _row(
    trial: FrozenTrial, seeds: Sequence[int], runs: list[tuple[float | None, float, int]], out: Path
) -> LeaderboardRow:
    """One trial's leaderboard row from its runs' (test accuracy, train time, params), one per seed."""
    accs = [acc for acc, _, _ in runs]
    finite = [a for a in accs if a is not None and math.isfinite(a)]
    return LeaderboardRow(
        rank=0,
        trial=trial.number,
        search_value=trial.values[0],
        params=runs[-1][2],
        flops=trial.user_attrs.get(FLOPS),
        seeds=list(seeds),
        test_acc=accs,
        test_acc_mean=statistics.fmean(finite) if finite else None,
        test_acc_std=statistics.stdev(finite) if len(finite) > 1 else None,  # one seed has no spread
        train_time_s_mean=statistics.fmean(t for _, t, _ in runs),
        out_dir=str(out),
    )


def _write_leaderboard_csv(board: Leaderboard) -> None:
    handle = io.StringIO()
    writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in board.rows:
        record = asdict(row)
        record["seeds"] = " ".join(map(str, row.seeds))
        record["test_acc"] = " ".join("nan" if a is None else repr(a) for a in row.test_acc)
        writer.writerow({key: record[key] for key in CSV_COLUMNS})
    write_text(board.csv_path, handle.getvalue())
