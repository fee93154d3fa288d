"""Never paying twice for one config: a sampled config identical to one the study trained is
answered from the study's record, at no cost.

Training is deterministic per seed, so a config trained again on the same data gives the
same result: a repeat is pure waste, and frequent where a space has few distinct choices. Two
trials are the same when their whole :class:`~search.config.TrialConfig` is (every parameter,
the training seed, and what the space fixes, such as the epochs) and they train on the same
data (its hash, as the study recorded it, and the input size): :func:`config_key`.

What answers a repeat (:class:`TrainedConfigs`): the first trained trial of its key that is
COMPLETE (the repeat is told the same values) or PRUNED by the pruner (the repeat is told
PRUNED with the same reports: it would have been stopped at the same point, the pruner's bar
only rising as the study grows). A failed or interrupted trial answers nothing (its failure may
not happen again), nor does a rejected one (the budget check rejects the repeat again, at no
cost), nor a trial still running (parallel trials: it has no answer yet, so the repeat trains).
Trials of earlier runs answer as this run's do: the key is stored on every trial that trains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import Spec, TrialConfig
from search.study.keys import CONFIG_KEY, DATA, REJECTED, REPEAT_OF, TRAIN_TIME_S


def data_identity(study: optuna.Study, spec: Spec, image_size: int) -> str:
    """What a trial's data is, for :func:`config_key`: the hash the study recorded (its images
    and labels, split as the spec says), else the spec's data section (no record: a rehearsal);
    and the input size the trials train at."""
    stored = study.user_attrs.get(DATA)
    recorded = stored.get("sha256") if isinstance(stored, dict) else None
    return f"{recorded or repr(spec.data)}|{image_size}"


def config_key(config: TrialConfig, data: str) -> str:
    """A hash of what a trial trains: its whole config (a dataclass's repr names every field,
    so a field added by a later version makes keys differ: such trials train again, never
    wrongly repeat) and its data (:func:`data_identity`)."""
    return hashlib.sha256(f"{config!r}|{data}".encode()).hexdigest()[:32]


def answers_repeats(trial: FrozenTrial) -> bool:
    """Whether a stored trial's record may answer a repeat of its config: trained here (it has a
    key, it is no repeat itself) and COMPLETE or PRUNED by the pruner (not rejected)."""
    attrs = trial.user_attrs
    if not isinstance(attrs.get(CONFIG_KEY), str) or REPEAT_OF in attrs:
        return False
    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.PRUNED and REJECTED not in attrs)


class TrainedConfigs:
    """The study's trained configs by key: which trial answers a repeat of each.

    Args:
        trials: The study's trials as stored (earlier runs' included).
    """

    def __init__(self, trials: Iterable[FrozenTrial] = ()) -> None:
        self.by_key: dict[str, int] = {}
        for trial in trials:
            self.add(trial)

    def add(self, trial: FrozenTrial) -> None:
        """Remember a trial that ended, where its record answers repeats (the first one of its key)."""
        if answers_repeats(trial):
            self.by_key.setdefault(trial.user_attrs[CONFIG_KEY], trial.number)

    def original(self, key: str) -> int | None:
        """The number of the trial whose record answers a config of ``key``; None: train it."""
        return self.by_key.get(key)


def answer_repeat(study: optuna.Study, trial: optuna.Trial, original: FrozenTrial) -> None:
    """Tell the study ``trial`` ended as ``original`` did, without training it: the sampler
    learns from it as from any trial, and ``repeat_of`` names the trial that was trained.

    A COMPLETE original gives its values (not its reports: the pruner's statistics count
    each trained curve once); a PRUNED one its reports (TPE ranks pruned trials by their
    last report), then PRUNED.
    """
    trial.set_user_attr(REPEAT_OF, original.number)
    trial.set_user_attr(TRAIN_TIME_S, 0.0)
    if original.state == TrialState.COMPLETE:
        study.tell(trial, original.values)
        return
    for step, value in sorted(original.intermediate_values.items()):
        trial.report(value, step)
    study.tell(trial, state=TrialState.PRUNED)
