"""The storage's retries and the driver lease, without a database server (the real PostgreSQL
restart and the second real driver are in test_reliability.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from search.config import UserError
from search.config.secrets import mask_secrets
from search.study.keys import DRIVER
from search.study.lease import DriverLease
from search.study.retrying import FIRST_WAIT_S, RetryingStorage, is_transient


class FlakyStorage(optuna.storages.InMemoryStorage):
    """An in-memory storage whose ``get_all_studies`` fails ``failures`` times with ``error``."""

    def __init__(self, failures: int, error: Exception) -> None:
        super().__init__()
        self.failures, self.error, self.calls = failures, error, 0

    def get_all_studies(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return super().get_all_studies()


LOST = OperationalError("SELECT 1", {}, Exception("connection to server at 127.0.0.1 failed: Connection refused"))


def test_transient_errors_are_retried_with_growing_waits_then_succeed() -> None:
    waits, messages = [], []
    storage = RetryingStorage(FlakyStorage(3, LOST), on_retry=messages.append, sleep=waits.append)
    optuna.create_study(storage=storage, study_name="s")
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]
    assert waits == [FIRST_WAIT_S, 2 * FIRST_WAIT_S, 4 * FIRST_WAIT_S]
    assert storage.retries == 3 and "Connection refused" in messages[0] and "retrying in 0.5 s" in messages[0]


def test_retries_stop_at_the_patience_and_raise_the_error() -> None:
    waits = []
    storage = RetryingStorage(FlakyStorage(100, LOST), retry_for_s=10, sleep=waits.append)
    with pytest.raises(OperationalError):
        storage.get_all_studies()
    assert sum(waits) <= 10 and waits == [0.5, 1, 2, 4]


def test_errors_about_the_data_are_not_retried() -> None:
    rejected = optuna.exceptions.StorageInternalError("commit failed")
    rejected.__cause__ = IntegrityError("INSERT", {}, Exception("duplicate key"))
    waits = []
    storage = RetryingStorage(FlakyStorage(1, rejected), sleep=waits.append)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        storage.get_all_studies()
    assert waits == [] and not is_transient(rejected) and is_transient(LOST)


def test_retrying_storage_checks_its_patience() -> None:
    with pytest.raises(ValueError, match="retry_for_s must be >= 0, got -1"):
        RetryingStorage(optuna.storages.InMemoryStorage(), retry_for_s=-1)


def test_mask_secrets_hides_only_the_password() -> None:
    assert mask_secrets("postgresql://alice:pa:ss@db:5432/optuna") == "postgresql://alice:***@db:5432/optuna"
    assert mask_secrets("sqlite:///studies/x.db") == "sqlite:///studies/x.db"


# --------------------------------------------------------------------------- the lease


def holder(pid: int, heartbeat: float, host: str | None = None) -> dict:
    return {"host": host or socket.gethostname(), "pid": pid, "token": "theirs", "heartbeat": heartbeat}


def a_dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_a_live_driver_holds_the_lease_and_a_second_one_is_refused() -> None:
    study = optuna.create_study()
    with DriverLease(study):
        record = study.user_attrs[DRIVER]
        assert record["pid"] == os.getpid()
        with pytest.raises(UserError, match=rf"being run by another driver \(pid {os.getpid()} on "):
            DriverLease(study).acquire()
    assert study.user_attrs[DRIVER] is None  # released on exit


@pytest.mark.parametrize("left_by", ["a killed process on this host", "a silent host"])
def test_a_dead_drivers_lease_is_taken_over(left_by: str) -> None:
    study = optuna.create_study()
    if left_by == "a killed process on this host":
        study.set_user_attr(DRIVER, holder(a_dead_pid(), time.time()))
    else:
        study.set_user_attr(DRIVER, holder(1, time.time() - 120, host="elsewhere"))
    with DriverLease(study, stale_after_s=60):
        assert study.user_attrs[DRIVER]["pid"] == os.getpid()


def test_another_hosts_fresh_lease_is_respected() -> None:
    study = optuna.create_study()
    study.set_user_attr(DRIVER, holder(1, time.time() - 5, host="elsewhere"))
    with pytest.raises(UserError, match="pid 1 on elsewhere, last heartbeat 5 s ago"):
        DriverLease(study).acquire()


def test_the_heartbeat_renews_the_lease() -> None:
    study = optuna.create_study()
    with DriverLease(study, heartbeat_s=0.1, stale_after_s=1):
        first = study.user_attrs[DRIVER]["heartbeat"]
        time.sleep(0.5)
        assert study.user_attrs[DRIVER]["heartbeat"] > first


def test_lease_arguments_are_checked() -> None:
    study = optuna.create_study()
    with pytest.raises(ValueError, match="heartbeat_s must be > 0, got 0"):
        DriverLease(study, heartbeat_s=0)
    with pytest.raises(ValueError, match=r"stale_after_s must be > heartbeat_s \(10.0\), got 5"):
        DriverLease(study, stale_after_s=5)


# --------------------------------------------------------------------------- each retried method


class LosesEveryFirstCall(optuna.storages.InMemoryStorage):
    """Each public method fails its first call with a lost connection. With ``apply_then_lose``,
    the first call of a write is applied and then its answer lost (a commit whose reply never came)."""

    def __init__(self, apply_then_lose: bool = False) -> None:
        super().__init__()
        self.apply_then_lose = apply_then_lose
        self.failed: set[str] = set()
        self.armed = False

    def __getattribute__(self, name: str):
        attr = super().__getattribute__(name)
        if name.startswith("_") or not callable(attr) or not super().__getattribute__("armed"):
            return attr
        failed = super().__getattribute__("failed")

        def call(*args, **kwargs):
            if name in failed:
                return attr(*args, **kwargs)
            failed.add(name)
            if super(LosesEveryFirstCall, self).__getattribute__("apply_then_lose"):
                attr(*args, **kwargs)
            raise LOST

        return call


def retried_storage(apply_then_lose: bool = False) -> tuple[RetryingStorage, LosesEveryFirstCall, int, int]:
    inner = LosesEveryFirstCall(apply_then_lose)
    study_id = inner.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    trial_id = inner.create_new_trial(study_id)
    inner.armed = True
    return RetryingStorage(inner, sleep=lambda s: None), inner, study_id, trial_id


DIST = optuna.distributions.FloatDistribution(0, 1)
CALLS = {
    "get_all_studies": lambda s, sid, tid: s.get_all_studies(),
    "get_study_id_from_name": lambda s, sid, tid: s.get_study_id_from_name("s"),
    "get_study_name_from_id": lambda s, sid, tid: s.get_study_name_from_id(sid),
    "get_study_directions": lambda s, sid, tid: s.get_study_directions(sid),
    "get_study_user_attrs": lambda s, sid, tid: s.get_study_user_attrs(sid),
    "get_study_system_attrs": lambda s, sid, tid: s.get_study_system_attrs(sid),
    "get_trial": lambda s, sid, tid: s.get_trial(tid),
    "get_all_trials": lambda s, sid, tid: s.get_all_trials(sid),
    "get_n_trials": lambda s, sid, tid: s.get_n_trials(sid),
    "get_trial_id_from_study_id_trial_number": lambda s, sid, tid: s.get_trial_id_from_study_id_trial_number(sid, 0),
    "get_trial_number_from_id": lambda s, sid, tid: s.get_trial_number_from_id(tid),
    "get_trial_params": lambda s, sid, tid: s.get_trial_params(tid),
    "get_trial_user_attrs": lambda s, sid, tid: s.get_trial_user_attrs(tid),
    "get_trial_system_attrs": lambda s, sid, tid: s.get_trial_system_attrs(tid),
    "check_trial_is_updatable": lambda s, sid, tid: s.check_trial_is_updatable(tid, TrialState.RUNNING),
    "set_study_user_attr": lambda s, sid, tid: s.set_study_user_attr(sid, "k", 1),
    "set_study_system_attr": lambda s, sid, tid: s.set_study_system_attr(sid, "k", 1),
    "set_trial_param": lambda s, sid, tid: s.set_trial_param(tid, "x", 0.5, DIST),
    "set_trial_intermediate_value": lambda s, sid, tid: s.set_trial_intermediate_value(tid, 1, 0.5),
    "set_trial_user_attr": lambda s, sid, tid: s.set_trial_user_attr(tid, "k", 1),
    "set_trial_system_attr": lambda s, sid, tid: s.set_trial_system_attr(tid, "k", 1),
    "set_trial_state_values": lambda s, sid, tid: s.set_trial_state_values(tid, TrialState.COMPLETE, [1.0]),
    "create_new_trial": lambda s, sid, tid: s.create_new_trial(sid),
    "create_new_study": lambda s, sid, tid: s.create_new_study([optuna.study.StudyDirection.MINIMIZE], "t"),
    "delete_study": lambda s, sid, tid: s.delete_study(sid),
}


def test_every_method_of_the_base_storage_is_written_out_and_tested() -> None:
    public = {n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_")}
    assert public - {"remove_session", "get_best_trial", "get_trial_param"} == set(CALLS)
    assert all(name in vars(RetryingStorage) for name in public)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_method_is_retried_after_a_lost_connection(name: str) -> None:
    storage, inner, study_id, trial_id = retried_storage()
    CALLS[name](storage, study_id, trial_id)
    assert name in inner.failed and storage.retries >= 1


@pytest.mark.parametrize("name", ["create_new_trial", "create_new_study", "set_trial_state_values", "delete_study"])
def test_a_write_that_landed_before_its_answer_was_lost_is_not_applied_twice(name: str) -> None:
    storage, inner, study_id, trial_id = retried_storage(apply_then_lose=True)
    inner.failed.update(n for n in CALLS if n != name)  # only the write under test loses its answer
    result = CALLS[name](storage, study_id, trial_id)
    inner.armed = False
    if name == "create_new_trial":
        assert inner.get_n_trials(study_id) == 2 and result == inner.get_all_trials(study_id)[-1]._trial_id
    elif name == "create_new_study":
        assert [s.study_name for s in inner.get_all_studies()] == ["s", "t"]
    elif name == "set_trial_state_values":
        assert result is True and inner.get_trial(trial_id).state == TrialState.COMPLETE
    else:
        assert inner.get_all_studies() == []
