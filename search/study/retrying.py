"""An Optuna storage that rides out a database that goes away for a while (a restarted
PostgreSQL, a locked SQLite file): :class:`RetryingStorage`.

Written out method by method, because not every write may simply be sent again: a write
whose commit went through but whose answer was lost would be applied twice. Reads and
writes that set a value (attributes, parameters, intermediate values) are idempotent and
are retried as they are. The three writes that are not (creating a study, creating a trial,
changing a trial's state) first look, after a reconnect, whether the lost write landed, and
only send it again when it did not. Only the driver writes to a study, so "a new trial
appeared since the call" can only be the call's own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Container, Sequence
from typing import Any, TypeVar

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from search.study.storage import first_line

# How long the driver keeps retrying a storage that cannot be reached before it gives up,
# and its first and longest waits.
RETRY_FOR_S = 300.0
FIRST_WAIT_S = 0.5
LONGEST_WAIT_S = 30.0

T = TypeVar("T")
_NOT_LANDED = object()


def is_transient(error: BaseException) -> bool:
    """Whether a storage error means "the database is unreachable or busy", not "bad data".

    Optuna wraps what SQLAlchemy raises at commit in ``StorageInternalError``; the cause
    tells a lost connection (worth retrying) from a rejected write (not).
    """
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, (OperationalError, InterfaceError)):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


class RetryingStorage(BaseStorage):
    """An Optuna storage whose operations wait out an unreachable database.

    An operation that fails with a lost connection or a busy database is retried with
    exponential backoff (``FIRST_WAIT_S`` doubling up to ``LONGEST_WAIT_S``) for up to
    ``retry_for_s`` seconds; any other error, or one that outlasts the patience, is raised.

    Args:
        storage: The storage to wrap (an ``RDBStorage``, usually).
        retry_for_s: Patience in seconds; 0 retries nothing.
        on_retry: Called with a one-line message before each wait.
        sleep: How to wait (tests pass a fake clock's).
        still_there: Called before each wait; raises (a UserError) when waiting cannot help,
            e.g. the SQLite file was deleted (see :func:`search.study.storage.storage_gone_check`).

    Raises:
        ValueError: ``retry_for_s`` is negative.
    """

    def __init__(
        self,
        storage: BaseStorage | str,
        *,
        retry_for_s: float = RETRY_FOR_S,
        on_retry: Callable[[str], None] = lambda message: None,
        sleep: Callable[[float], None] = time.sleep,
        still_there: Callable[[], None] = lambda: None,
    ) -> None:
        if retry_for_s < 0:
            raise ValueError(f"retry_for_s must be >= 0, got {retry_for_s!r}")
        self.storage = optuna.storages.get_storage(storage)  # an RDBStorage gets Optuna's trial cache
        self.retry_for_s = retry_for_s
        self.on_retry = on_retry
        self.sleep = sleep
        self.still_there = still_there
        self.retries = 0

    def _retry(self, operation: Callable[[], T], landed: Callable[[], Any] | None = None) -> T:
        """``operation()``, tried again while its error is transient.

        Args:
            operation: The call to the wrapped storage.
            landed: For a write that is not idempotent: after a transient error, returns the
                write's result when it did land after all, else ``_NOT_LANDED``.
        """
        waited, wait = 0.0, FIRST_WAIT_S
        while True:
            try:
                return operation()
            except Exception as error:
                if not is_transient(error) or waited + wait > self.retry_for_s:
                    raise
                self.still_there()
                self.retries += 1
                self.on_retry(f"storage unreachable ({first_line(error.__cause__ or error)}); retrying in {wait:g} s")
                self.sleep(wait)
                waited += wait
                wait = min(wait * 2, LONGEST_WAIT_S)
            if landed is not None:
                result = self._retry(landed)
                if result is not _NOT_LANDED:
                    return result

    # ---- writes that are not idempotent: look whether the lost write landed

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        name = study_name or f"no-name-{uuid.uuid4()}"  # a name of our own, so a lost create can be found

        def landed() -> Any:
            try:
                return self.storage.get_study_id_from_name(name)
            except KeyError:
                return _NOT_LANDED

        return self._retry(lambda: self.storage.create_new_study(directions, name), landed)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        before = self._retry(lambda: self.storage.get_n_trials(study_id))

        def landed() -> Any:
            trials = self.storage.get_all_trials(study_id, deepcopy=False)
            return trials[-1]._trial_id if len(trials) > before else _NOT_LANDED

        return self._retry(lambda: self.storage.create_new_trial(study_id, template_trial), landed)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        def landed() -> Any:
            trial = self.storage.get_trial(trial_id)
            same_values = values is None or list(trial.values or []) == list(values)
            return True if trial.state == state and same_values else _NOT_LANDED

        return self._retry(lambda: self.storage.set_trial_state_values(trial_id, state, values), landed)

    def delete_study(self, study_id: int) -> None:
        def landed() -> Any:
            known = {s._study_id for s in self.storage.get_all_studies()}
            return None if study_id not in known else _NOT_LANDED

        self._retry(lambda: self.storage.delete_study(study_id), landed)

    # ---- writes that set a value: idempotent, sent again as they are

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self.storage.set_study_user_attr(study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self.storage.set_study_system_attr(study_id, key, value))

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        self._retry(lambda: self.storage.set_trial_param(trial_id, param_name, param_value_internal, distribution))

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._retry(lambda: self.storage.set_trial_intermediate_value(trial_id, step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self.storage.set_trial_user_attr(trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self.storage.set_trial_system_attr(trial_id, key, value))

    # ---- reads

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._retry(lambda: self.storage.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._retry(lambda: self.storage.get_study_name_from_id(study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._retry(lambda: self.storage.get_study_directions(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry(lambda: self.storage.get_study_user_attrs(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry(lambda: self.storage.get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._retry(self.storage.get_all_studies)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._retry(lambda: self.storage.get_trial(trial_id))

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._retry(lambda: self.storage.get_all_trials(study_id, deepcopy=deepcopy, states=states))

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self._retry(lambda: self.storage.get_n_trials(study_id, state))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._retry(lambda: self.storage.get_best_trial(study_id))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._retry(lambda: self.storage.get_trial_id_from_study_id_trial_number(study_id, trial_number))

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._retry(lambda: self.storage.get_trial_number_from_id(trial_id))

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._retry(lambda: self.storage.get_trial_param(trial_id, param_name))

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._retry(lambda: self.storage.get_trial_params(trial_id))

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._retry(lambda: self.storage.get_trial_user_attrs(trial_id))

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._retry(lambda: self.storage.get_trial_system_attrs(trial_id))

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._retry(lambda: self.storage.check_trial_is_updatable(trial_id, trial_state))

    def remove_session(self) -> None:
        self.storage.remove_session()
