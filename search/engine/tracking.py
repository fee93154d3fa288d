"""Experiment trackers fed by the driver from what trials report: TensorBoard (scalars per
epoch and the hparams view, one run per trial) and MLflow (one run per trial in an experiment
named for the study). Written by the driver, not the workers, so they work on a cluster; a
resumed run adds the trials a tracker lacks and never a second run of a trial.

Both libraries are optional extras, imported only when asked for (``pip install -e
'.[tensorboard]'``, ``'.[mlflow]'``); a missing one is a one-line error naming the extra. An
MLflow store that does not answer one quick request is a one-line error before Ray starts,
not minutes of MLflow's retries. The tracking URI (and its password) stays in the driver's
memory: the spec the study stores and Ray gets has it masked (:func:`without_secrets`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from search.config import Spec, TrackingConfig, UserError
from search.config.errors import one_line
from search.config.secrets import mask_secrets
from search.engine.events import EpochReport, RunEnd, RunObserver, RunStart, TrialEnd, TrialStart
from search.engine.ray_runtime import through_root
from search.study.keys import (
    COMPLETE,
    EPOCHS_RUN,
    ERROR,
    FAILED,
    FLOPS,
    INTERRUPTED,
    PARAMS,
    PRUNED,
    REJECTED,
    trial_status,
)

# What a trial reports per epoch, and the TensorBoard tag each goes under.
EPOCH_TAGS = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "balanced_acc": "val/balanced_acc",
    "macro_f1": "val/macro_f1",
    "lr": "lr",
    "images_per_s": "images_per_s",
}
TAG_STUDY = "resnet_search.study"  # MLflow tags that find a trial's run again on resume
TAG_TRIAL = "resnet_search.trial"
UNPREFIXED = ("epochs", "model_params", "model_flops")  # MLflow metrics that are no result: no ``final_``
# An MLflow run's status for each display state (its tag ``state`` is the display state itself).
MLFLOW_STATUS = {COMPLETE: "FINISHED", PRUNED: "FINISHED", FAILED: "FAILED", INTERRUPTED: "KILLED"}
CHECK_TIMEOUT_S = 5  # the check of an MLflow store before the run: one request, no retries


def tracking_observers(spec: Spec) -> list[RunObserver]:
    """The trackers the spec's ``tracking`` asks for (checked now, before Ray starts).

    Raises:
        UserError: a tracker's library is not installed (the message names the extra), or
            an MLflow store does not answer (the message names its masked URI).
    """
    config, study_name = spec.tracking, spec.study.name
    chosen = [(TRACKERS[f.name], getattr(config, f.name)) for f in dataclasses.fields(config)]
    return [make(where, study_name) for make, where in chosen if where]


def _missing(extra: str, flag: str) -> UserError:
    return UserError(f"{flag} needs the {extra} extra, which is not installed: pip install -e '.[{extra}]'")


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def final_metrics(trial: FrozenTrial, result: dict[str, Any], objectives: tuple[str, ...]) -> dict[str, float]:
    """A trial's final metrics: the last report's validation loss/accuracy, the objective values
    of a complete trial (else the first objective's last report), its epochs and size."""
    metrics = _finite({k: result.get(k) for k in ("val_acc", "val_loss")})
    if trial.state == TrialState.COMPLETE and trial.values:
        metrics.update(_finite(dict(zip(objectives, trial.values))))
    elif trial.intermediate_values:
        metrics.setdefault(objectives[0], trial.intermediate_values[max(trial.intermediate_values)])
    attrs = trial.user_attrs
    metrics.update(_finite({"epochs": attrs.get(EPOCHS_RUN), "model_params": attrs.get(PARAMS)}))
    metrics.update(_finite({"model_flops": attrs.get(FLOPS)}))
    return metrics


class TensorBoardWriter(RunObserver):
    """One TensorBoard run per trial under ``folder`` (``<dir>/<study>/trial_0007``): the epoch
    scalars of :data:`EPOCH_TAGS` at step = epoch, and at its end the trial's parameters with
    its final metrics (``final/...``) in the hparams view.

    Raises:
        UserError: tensorboard is not installed.
    """

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "--tensorboard") from None
        self.folder = folder
        self.make_writer = SummaryWriter
        self.writers: dict[int, Any] = {}
        self.params: dict[int, dict[str, Any]] = {}
        self.objectives: tuple[str, ...] = ("val_acc",)

    def _writer(self, number: int) -> Any:
        if number not in self.writers:
            self.writers[number] = self.make_writer(str(self.folder / f"trial_{number:04d}"))
        return self.writers[number]

    def run_started(self, event: RunStart) -> None:
        """Trials of the study that ended before and have no run here yet get one from their record."""
        self.objectives = event.objectives
        for trial in event.finished:
            if trial_status(trial) != REJECTED and not (self.folder / f"trial_{trial.number:04d}").exists():
                writer = self._writer(trial.number)
                for step, value in sorted(trial.intermediate_values.items()):
                    writer.add_scalar(EPOCH_TAGS.get(event.metric, event.metric), value, step)
                self._end(trial, {})

    def trial_started(self, event: TrialStart) -> None:
        self._writer(event.number)
        self.params[event.number] = {**event.params, "model_params": event.n_params, "model_flops": event.flops}

    def epoch_reported(self, event: EpochReport) -> None:
        writer = self._writer(event.number)
        for key, tag in EPOCH_TAGS.items():
            if key in event.metrics:
                writer.add_scalar(tag, event.metrics[key], event.epoch)
        writer.flush()  # TensorBoard shows the epoch now, not at the next 2-minute flush

    def trial_ended(self, event: TrialEnd) -> None:
        if event.status != REJECTED:
            self._end(event.trial, event.result)

    def _end(self, trial: FrozenTrial, result: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self._writer(trial.number)
        params = self.params.pop(trial.number, None) or {
            **trial.params,
            "model_params": trial.user_attrs.get(PARAMS),
            "model_flops": trial.user_attrs.get(FLOPS),
        }
        values = {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))}
        metrics = {f"final/{k}": v for k, v in final_metrics(trial, result, self.objectives).items()}
        experiment, start, end = hparams({**values, "state": trial_status(trial)}, metrics)
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value)
        writer.close()
        self.writers.pop(trial.number, None)

    def run_ended(self, event: RunEnd) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


class MLflowWriter(RunObserver):
    """One MLflow run per trial, in the experiment named for the study: its parameters, the
    epoch metrics of :data:`EPOCH_TAGS` with step = epoch, its final metrics, its state (tag
    ``state``, the trial's display state; MLflow status FINISHED, FAILED, or KILLED for
    ``interrupted``) and its size. Runs carry the study and the trial number as tags, so a
    resumed run finds them and adds none twice.

    Args:
        uri: An MLflow tracking URI: ``sqlite:///mlflow.db`` (recommended), ``http://host:5000``,
            or ``file:mlruns`` (MLflow 3 reads it back only with ``MLFLOW_ALLOW_FILE_STORE=true``).
        study_name: The study (and experiment) name.

    Raises:
        UserError: mlflow is not installed, or it does not take the URI.
    """

    def __init__(self, uri: str, study_name: str) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "--mlflow") from None
        if urllib.parse.urlparse(uri).scheme in ("", "file"):
            # MLflow 3 keeps its file store only on request; the user asked for one by name.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # MLflow writes a "View run at <URI>" line to stdout for every run it ends on a server:
        # stdout is the command's result, and the URI may hold a password.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        self.where = mask_secrets(uri)  # the only form of the URI that is ever shown
        self.remote = urllib.parse.urlparse(uri).scheme in ("http", "https")
        self.make_client = lambda: MlflowClient(tracking_uri=uri)
        # A local store is opened (and its tables made) when the run starts, so that MLflow's
        # set-up lines go to the run's log; a server is asked once before (check_reachable).
        self.client: Any = None
        self.study_name = study_name
        self.experiment_id = ""
        self.runs: dict[int, str] = {}  # trial number -> run id, this run's open ones
        self.known: dict[int, str] = {}  # trial number -> run id, every run of the study's experiment
        self.objectives: tuple[str, ...] = ("val_acc",)
        self.logs = ExitStack()

    def check_reachable(self) -> None:
        """One request to the store, with no retries and a short timeout: a server that is
        down or refuses us ends the run before it starts, in seconds, instead of after
        MLflow's own retries (minutes) at the first trial.

        Raises:
            UserError: the store did not answer; the message names its masked URI.
        """
        if not self.remote:
            return
        self.client = self._client()
        with _quick_requests():
            try:
                self.client.get_experiment_by_name(self.study_name)
            except Exception as error:  # MlflowException, RestException, OSError: all mean "unusable"
                raise self._unusable(error) from None

    def _client(self) -> Any:
        try:
            return self.make_client()
        except Exception as error:  # MlflowException: a scheme MLflow has no store for
            raise self._unusable(error) from None

    def _unusable(self, error: Exception) -> UserError:
        return UserError(
            f"MLflow tracking URI {self.where} cannot be used: {_reason(error)}; start the server or fix "
            "--mlflow (or tracking.mlflow); credentials: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )

    def run_started(self, event: RunStart) -> None:
        # MLflow's log lines (creating a database's tables...) go to the run's log, not the terminal.
        self.logs.enter_context(through_root("mlflow", "alembic"))
        if self.client is None:
            self.client = self._client()
        self.objectives = event.objectives
        experiment = self.client.get_experiment_by_name(self.study_name)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.study_name)
        existing = self.existing_runs()
        self.known = {number: run.info.run_id for number, run in existing.items()}
        for trial in event.finished:
            run = existing.get(trial.number)
            if run is None:
                self._backfill(trial, event.metric)
            elif run.info.status == "RUNNING":  # its driver was killed: end it as the study did
                self._end(run.info.run_id, trial, {})

    def existing_runs(self) -> dict[int, Any]:
        """The experiment's runs of this study, by trial number (every page)."""
        runs: dict[int, Any] = {}
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{TAG_STUDY}` = '{self.study_name}'",
                max_results=1000,
                page_token=token,
            )
            for run in page:
                runs[int(run.data.tags[TAG_TRIAL])] = run
            token = page.token
            if not token:
                return runs

    def _create(self, number: int, params: dict[str, Any], start_ms: int | None = None) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id,
            start_time=start_ms,
            tags={TAG_STUDY: self.study_name, TAG_TRIAL: str(number)},
            run_name=f"trial_{number}",
        )
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        self.known[number] = run.info.run_id
        return run.info.run_id

    def _backfill(self, trial: FrozenTrial, metric: str) -> None:
        from mlflow.entities import Metric

        if trial_status(trial) == REJECTED:
            return
        start = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        run_id = self._create(trial.number, trial.params, int(start * 1000))
        history = [Metric(metric, v, int(start * 1000), s) for s, v in sorted(trial.intermediate_values.items())]
        if history:
            self.client.log_batch(run_id, metrics=history)
        self._end(run_id, trial, {})

    def trial_started(self, event: TrialStart) -> None:
        self.runs[event.number] = self._create(event.number, event.params)

    def epoch_reported(self, event: EpochReport) -> None:
        from mlflow.entities import Metric

        run_id = self.runs.get(event.number)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, event.metrics[k], now, event.epoch) for k in EPOCH_TAGS if k in event.metrics]
        self.client.log_batch(run_id, metrics=metrics)

    def trial_ended(self, event: TrialEnd) -> None:
        run_id = self.runs.pop(event.number, None)
        if run_id is not None:
            self._end(run_id, event.trial, event.result)

    def _end(self, run_id: str, trial: FrozenTrial, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        status = trial_status(trial)
        now = int(time.time() * 1000)
        step = trial.user_attrs.get(EPOCHS_RUN) or 0
        final = [
            Metric(k if k in UNPREFIXED else f"final_{k}", v, now, step)
            for k, v in final_metrics(trial, result, self.objectives).items()
        ]
        if final:
            self.client.log_batch(run_id, metrics=final)
        self.client.set_tag(run_id, "state", status)
        reason = trial.user_attrs.get(ERROR) or trial.user_attrs.get(INTERRUPTED) or trial.user_attrs.get(REJECTED)
        if reason:
            self.client.set_tag(run_id, "reason", str(reason)[:5000])
        end = trial.datetime_complete.timestamp() if trial.datetime_complete else time.time()
        self.client.set_terminated(run_id, MLFLOW_STATUS.get(status, "FINISHED"), end_time=int(end * 1000))

    def run_ended(self, event: RunEnd) -> None:
        """Runs still open (the run ended before their trials told an outcome) end KILLED; the
        model folders the study keeps (``run --keep``) go to their trials' runs as artifacts
        (``model/``), once."""
        for run_id in self.runs.values():
            self.client.set_tag(run_id, "state", INTERRUPTED)
            self.client.set_terminated(run_id, "KILLED")
        self.runs.clear()
        for number, folder in event.models.items():
            kept = self.known.get(number)
            if kept and Path(folder).is_dir() and not self.client.list_artifacts(kept, "model"):
                self.client.log_artifacts(kept, folder, artifact_path="model")
        self.logs.close()


@contextmanager
def _quick_requests() -> Iterator[None]:
    """MLflow's HTTP requests without retries and with a timeout of :data:`CHECK_TIMEOUT_S`
    (MLflow reads these variables at every request), the caller's settings put back after."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT_S)}
    saved = {name: os.environ.get(name) for name in quick}
    os.environ.update(quick)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _reason(error: Exception) -> str:
    """Why a request failed, masked and short: the innermost cause urllib3 names (``Connection
    refused``, ``Read timed out``, ``Failed to resolve ...``), else the message's first line."""
    text = mask_secrets(one_line(str(error).strip() or type(error).__name__))
    caused = text.rpartition("Caused by ")[2] if "Caused by " in text else ""
    detail = caused.rpartition("): ")[2].rstrip("\"')").strip()
    return detail or text[:300]


def _mlflow(uri: str, study_name: str) -> MLflowWriter:
    writer = MLflowWriter(uri, study_name)
    writer.check_reachable()
    return writer


# Each key of the spec's ``tracking`` and the tracker it makes from its value and the study's
# name; a key without its entry fails on import, never silently unused.
TRACKERS: dict[str, Callable[[str, str], RunObserver]] = {
    "tensorboard": lambda folder, study_name: TensorBoardWriter(Path(folder).resolve() / study_name),
    "mlflow": _mlflow,
}
if set(TRACKERS) != {f.name for f in dataclasses.fields(TrackingConfig)}:
    raise RuntimeError(f"TRACKERS has {sorted(TRACKERS)}, not the keys of the spec's tracking")
