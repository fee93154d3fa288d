"""The peers, each through its own package's API, on exactly our objective.

- Space: our spec's space (:mod:`search.config.distributions`) mapped to a ConfigSpace
  (:func:`config_space`): a categorical per choice, an integer or float range per range
  (log scale kept), a categorical per conditional choice whose options' parameters are
  active only under their label (ConfigSpace conditions). Parameter names are Optuna's.
- Fidelity (:class:`Ladder`): epochs of the space's own trial (5), from ``epochs / eta**2``
  to ``epochs`` with ``eta = 3`` as each method computes its rungs; a budget becomes
  ``round(budget)`` epochs (at least 1): rungs of 1, 2 and 5 epochs, where our successive
  halving has 1 and 3 (a geometric ladder cannot hold 1, 3 and 5). A strategy with
  cheaper fidelities (``Strategy.rungs``) maps the peer's budgets onto our rung ladder
  instead: its lowest budget is the first rung (a quarter epoch at 8 px), then each rung,
  then the whole trial.
- Cost, in full-epoch equivalents: every evaluation runs through :class:`PeerEvaluator`,
  which tells our StudyBridge about it as ``resnet-search run`` would (the budget check,
  every report, the outcome), so a peer's trials land in the same records as ours. A
  config evaluated again at a larger budget continues from where it stopped (it pays only
  the extra compute, as a promotion in our successive halving does); one evaluated again
  at a budget it already reached is answered from its reports at no cost (a repeat); an
  over-budget config is told the worst value (accuracy 0) at zero cost. One trial at a time.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from search.config import Rung, Spec
from search.config.distributions import Branches, Categorical, Fixed, Node, Range, Sequence, Struct
from search.data import load_dataset
from search.engine.bridge import StudyBridge, TrialSetup
from search.engine.samplers import create_study
from search.engine.trainable import epoch_report
from search.study.keys import CONFIG_KEY, REPEAT_OF
from search.train import EpochMetrics

from .ours import Rejections, Running, end_trial, final_report
from .records import SearchRun
from .sessions import EpochSession, PausedSessions
from .settings import Settings, Strategy, full_trial_epochs, strategy_spec

ETA = 3
WORST = 0.0  # the validation accuracy an over-budget or failed config is told


# --------------------------------------------------------------------------- the space


class Codec:
    """Categorical values as ConfigSpace labels (strings) and back."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def labels(self, name: str, choices: tuple) -> list[str]:
        self.values[name] = {repr(value): value for value in choices}
        return list(self.values[name])

    def decode(self, config: dict) -> dict[str, Any]:
        """A peer's config (its active parameters) as Optuna parameters of our space."""
        params = {}
        for name, value in dict(config).items():
            if name in self.values:
                params[name] = self.values[name][str(value)]
            elif hasattr(value, "item"):  # numpy scalars
                params[name] = value.item()
            else:
                params[name] = value
        return params


def config_space(spec: Spec, seed: int) -> tuple[Any, Codec]:
    """Our space as a ConfigSpace ``ConfigurationSpace`` (conditional parameters included).

    Returns:
        The configuration space and the codec that turns its configs into Optuna parameters.
    """
    import ConfigSpace as CS

    space = CS.ConfigurationSpace(seed=seed)
    codec = Codec()
    hyperparameters: list = []
    conditions: list = []
    _walk(spec.space, None, codec, hyperparameters, conditions)
    space.add(hyperparameters)
    space.add(conditions)
    return space, codec


def _walk(node: Node, parent: tuple[Any, str] | None, codec: Codec, hps: list, conditions: list) -> None:
    """Add ``node``'s hyperparameters; ``parent`` is the enclosing choice's (hyperparameter, label)."""
    import ConfigSpace as CS

    children: list[tuple[Node, tuple[Any, str] | None]] = []
    hp = None
    if isinstance(node, Fixed):
        return
    if isinstance(node, Categorical):
        hp = CS.CategoricalHyperparameter(node.loc.name, codec.labels(node.loc.name, node.choices))
    elif isinstance(node, Range):
        hp = _range(node)
    elif isinstance(node, Branches):
        hp = CS.CategoricalHyperparameter(node.param, list(node.labels))
        children = [(option, (hp, label)) for label, option in zip(node.labels, node.options, strict=True)]
    elif isinstance(node, Struct):
        children = [(child, parent) for child in node.fields.values()]
    elif isinstance(node, Sequence):
        children = [(child, parent) for child in node.items]
    else:
        raise TypeError(f"no ConfigSpace form for {type(node).__name__}")
    if hp is not None:
        hps.append(hp)
        if parent is not None:
            conditions.append(CS.EqualsCondition(hp, parent[0], parent[1]))
    for child, child_parent in children:
        _walk(child, child_parent, codec, hps, conditions)


def _range(node: Range) -> Any:
    import ConfigSpace as CS

    name = node.loc.name
    if node.step:  # a grid: its points, in order
        count = int(round((node.high - node.low) / node.step)) + 1
        points = [node.kind(node.low + i * node.step) for i in range(count)]
        return CS.OrdinalHyperparameter(name, points)
    if node.kind is int:
        return CS.UniformIntegerHyperparameter(name, int(node.low), int(node.high), log=node.log)
    return CS.UniformFloatHyperparameter(name, node.low, node.high, log=node.log)


def fidelity_epochs(budget: float) -> int:
    return max(1, round(float(budget)))


@dataclass(frozen=True)
class Stop:
    """Where a peer's evaluation at one of its fidelities stops training: at the report of rung
    ``rung`` (the strategy's cheaper fidelity), else after ``epoch`` whole epochs."""

    epoch: int | None = None
    rung: int | None = None

    def reached_by(self, report: EpochMetrics) -> bool:
        if self.rung is not None:
            return report.rung == self.rung
        assert self.epoch is not None
        return report.epoch >= self.epoch  # a rung within an epoch reports the epochs before it


def value_at(reports: list[EpochMetrics], stop: Stop) -> float | None:
    """The validation accuracy of the first report that reaches ``stop`` (None: not reached)."""
    return next((r.val_acc for r in reports if stop.reached_by(r)), None)


class Ladder:
    """A peer's fidelities as points of our training.

    Without rungs: epochs of the space's trial, ``round(budget)`` (at least 1), from
    ``epochs / eta**2``: stops after 1, 2 and 5 epochs of a 5-epoch trial. With the strategy's
    rungs (:attr:`~.settings.Strategy.rungs`): each rung, then the whole trial, one per power of
    ``eta`` from the top, so the peer's lowest budget is the first rung.
    """

    def __init__(self, epochs: int, rungs: tuple[Rung, ...]) -> None:
        self.epochs = epochs
        reached = [Stop(rung=k) for k, rung in enumerate(rungs) if rung.position < epochs]  # before the end
        self.points = [*reached, Stop(epoch=epochs)] if rungs else []

    @property
    def min_fidelity(self) -> float:
        return self.epochs / ETA ** (len(self.points) - 1 if self.points else 2)

    def stop(self, budget: float) -> Stop:
        if not self.points:
            return Stop(epoch=min(fidelity_epochs(budget), self.epochs))
        down = round(math.log(self.epochs / max(float(budget), 1e-12)) / math.log(ETA))
        return self.points[max(0, len(self.points) - 1 - down)]

    def is_full(self, stop: Stop) -> bool:
        return stop.rung is None and stop.epoch == self.epochs


# --------------------------------------------------------------------------- one evaluation


class PeerEvaluator:
    """A peer's evaluations of configs at a fidelity, through our StudyBridge; compute in
    full-epoch equivalents.

    Args:
        settings, strategy, seed, budget: The run.
    """

    def __init__(self, settings: Settings, strategy: Strategy, seed: int, budget: int) -> None:
        spec = strategy_spec(settings, strategy, seed, budget)
        # Every config comes from the peer (enqueued, so the study's sampler never draws);
        # one rejection ends the bridge's draw and the peer is told (the bridge would
        # otherwise draw again itself); an evaluation replayed from a paused run costs
        # nothing, so the trial count must not end the search.
        self.spec = replace(spec, study=replace(spec.study, max_rejections=1, n_trials=1_000_000))
        self.data = load_dataset(self.spec.data, data_dir=settings.data_dir, download=False)
        self.study = create_study(self.spec, optuna.storages.InMemoryStorage())
        self.bridge = StudyBridge(self.study, self.spec, TrialSetup(self.data.image_size, settings.data_dir))
        self.rejections = Rejections(self.study)
        self.run = SearchRun(strategy.key, seed, budget)
        self.epochs = full_trial_epochs(self.spec)
        self.rungs = strategy.fidelity_rungs
        self.ladder = Ladder(self.epochs, self.rungs)
        self.paused = PausedSessions()
        self.reports: dict[tuple, list[EpochMetrics]] = {}  # every config trained: its reports so far
        self.space, self.codec = config_space(self.spec, seed)

    @property
    def exhausted(self) -> bool:
        return self.run.exhausted

    @property
    def min_fidelity(self) -> float:
        return self.ladder.min_fidelity

    def evaluate(self, config: Any, budget: float) -> tuple[float, float]:
        """Train ``config`` to the fidelity ``budget`` (continuing a paused run of it if there
        is one); a config already trained that far is answered from its reports at no cost
        (a repeat, as our bridge answers one).

        Returns:
            The validation accuracy there (``WORST`` for an over-budget or failed config) and
            the compute it cost.
        """
        if self.run.exhausted:  # a peer's last request after the budget ran out: nothing trains
            return WORST, 0.0
        params = self.codec.decode(config)
        stop = self.ladder.stop(budget)
        key = tuple(sorted(params.items()))
        known = value_at(self.reports.get(key, []), stop)
        if known is not None:
            self.run.ended(self.run.spent, "repeat")
            return known, 0.0
        spent = self.run.spent
        self.study.enqueue_trial(params)
        job = self.bridge.next_job()
        self.rejections.record(self.run)
        if job is None:  # over the budget (or a repeat of a config ours keys alike): recorded
            self.bridge.stop_reason, self.bridge.rejections_in_a_row = None, 0
            return self._answered(), 0.0
        session = self.paused.take(key)
        if session is None or session.done:
            session = EpochSession(job.trial, self.data, self.rungs)
        slot = Running(job, session, spent)
        for trained in session.history:  # what it already trained: reported again, free
            self.bridge.report(job.number, epoch_report(trained))
        while value_at(session.history, stop) is None and not self.run.exhausted:
            before = session.cost
            metrics = session.advance()
            if metrics is None:
                break
            self.run.spend(metrics.full_epochs - before)
            self.bridge.report(job.number, epoch_report(metrics))
        self.reports[key] = list(session.history)
        value = value_at(session.history, stop) if session.error is None else None
        if value is not None and not self.ladder.is_full(stop):
            self._pause(slot, key)
        else:
            end_trial(self.bridge, slot, self.run, self.epochs, pruned=False)
        return (WORST if value is None else value), self.run.spent - spent

    def _answered(self) -> float:
        """The value of a config the bridge did not train: a repeat's record, else (over the
        budget) the worst."""
        last = self.study.get_trials(deepcopy=False)[-1]
        if REPEAT_OF in last.user_attrs and last.state == optuna.trial.TrialState.COMPLETE:
            return float(last.values[0])
        return WORST

    def _pause(self, slot: Running, key: tuple) -> None:
        """The peer stopped the trial at one of its fidelities: PRUNED in the study, kept for a
        promotion (so its record answers no repeat: the promotion trains on)."""
        self.bridge.mark_pruned(slot.job.number)
        self.bridge.finish(slot.job.number, final_report(slot.session, self.epochs, pruned=True), error=False)
        self.run.ended(slot.started, "pruned")
        stored = self.study.get_trials(deepcopy=False)[slot.job.number].user_attrs.get(CONFIG_KEY)
        if self.bridge.trained.by_key.get(stored) == slot.job.number:
            del self.bridge.trained.by_key[stored]
        self.paused.keep(key, slot.session)

    def close(self, start: float) -> SearchRun:
        self.paused.close()
        self.run.wall_s = time.monotonic() - start
        return self.run


# --------------------------------------------------------------------------- the peers


def search_with_peer(settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun:
    """One search by a peer package until the compute budget is spent."""
    start = time.monotonic()
    evaluator = PeerEvaluator(settings, strategy, seed, budget)
    with tempfile.TemporaryDirectory(prefix=f"{strategy.engine}_") as scratch:
        PEERS[strategy.engine](evaluator, seed, Path(scratch))
    return evaluator.close(start)


def run_dehb(evaluator: PeerEvaluator, seed: int, scratch: Path) -> None:
    """DEHB (Awad et al. 2021) through ``dehb``'s ask/tell interface; it minimizes ``fitness``."""
    from dehb import DEHB
    from loguru import logger

    logger.remove()  # dehb logs every step to stdout at import; its own file sink stays
    optimizer = DEHB(
        cs=evaluator.space,
        dimensions=len(list(evaluator.space.values())),
        min_fidelity=evaluator.min_fidelity,
        max_fidelity=evaluator.epochs,
        eta=ETA,
        n_workers=1,
        seed=seed,
        output_path=str(scratch),
        save_freq="end",
    )
    while not evaluator.exhausted:
        job = optimizer.ask()
        value, cost = evaluator.evaluate(job["config"], job["fidelity"])
        optimizer.tell(job, {"fitness": 1.0 - value, "cost": cost})


def run_smac(evaluator: PeerEvaluator, seed: int, scratch: Path) -> None:
    """SMAC3's multi-fidelity facade (Hyperband with a random forest) through its ask/tell interface.

    ``n_trials`` is the compute budget in full-epoch equivalents (as in round 2, where every
    evaluation but a continued one cost an epoch at least); SMAC sizes its initial design
    from it and never stops asking by it here.
    """
    from smac import MultiFidelityFacade, Scenario
    from smac.runhistory.dataclasses import TrialValue

    scenario = Scenario(
        evaluator.space,
        deterministic=True,
        n_trials=evaluator.run.budget,
        min_budget=evaluator.min_fidelity,
        max_budget=evaluator.epochs,
        seed=seed,
        output_directory=scratch / "smac",
    )
    smac = MultiFidelityFacade(
        scenario,
        target_function=_asked_only,
        intensifier=MultiFidelityFacade.get_intensifier(scenario, eta=ETA),
        overwrite=True,
        logging_level=logging.ERROR,
    )
    while not evaluator.exhausted:
        info = smac.ask()
        value, cost = evaluator.evaluate(info.config, info.budget or evaluator.epochs)
        smac.tell(info, TrialValue(cost=1.0 - value, time=float(cost)))


def _asked_only(config: Any, seed: int = 0, budget: float = 0.0) -> float:
    raise AssertionError("SMAC runs by ask and tell here; it never calls its target function")


def run_bohb(evaluator: PeerEvaluator, seed: int, scratch: Path) -> None:
    """BOHB (Falkner et al. 2018) through hpbandster, the authors' package: its master, a
    nameserver on the loopback address and one worker in this process."""
    import hpbandster.core.nameserver as hpns
    import numpy as np
    from hpbandster.core.worker import Worker
    from hpbandster.optimizers import BOHB

    _pyro_serializes_numpy()

    class EvaluatorWorker(Worker):
        def compute(self, config: dict, budget: float, **kwargs: Any) -> dict:
            value, cost = evaluator.evaluate(config, budget)
            return {"loss": 1.0 - value, "info": {"full_epochs": cost}}

    class BudgetedBOHB(BOHB):
        """BOHB that starts nothing more once the compute budget is spent."""

        def active_iterations(self) -> list:
            return [] if evaluator.exhausted else super().active_iterations()

    np.random.seed(seed)  # BOHB's random fraction and KDE sampling draw from numpy's global RNG
    run_id = f"bohb{seed}_{scratch.name}"
    quiet = logging.getLogger("hpbandster_quiet")
    quiet.setLevel(logging.ERROR)
    server = hpns.NameServer(run_id=run_id, host="127.0.0.1", port=0)  # any free port: runs may overlap
    host, port = server.start()
    try:
        worker = EvaluatorWorker(nameserver=host, nameserver_port=port, run_id=run_id, logger=quiet)
        worker.run(background=True)
        optimizer = BudgetedBOHB(
            configspace=evaluator.space,
            run_id=run_id,
            nameserver=host,
            nameserver_port=port,
            min_budget=evaluator.min_fidelity,
            max_budget=evaluator.epochs,
            eta=ETA,
            logger=quiet,
        )
        optimizer.run(n_iterations=10 * evaluator.run.budget)
        optimizer.shutdown(shutdown_workers=True)
    finally:
        server.shutdown()


def _pyro_serializes_numpy() -> None:
    """hpbandster sends configs through Pyro4's serpent, which predates ConfigSpace 1.x's numpy
    values: serialize numpy scalars as the Python values they hold."""
    import numpy as np
    import serpent

    for kind in (np.str_, np.int64, np.float64, np.bool_):
        serpent.register_class(kind, lambda obj, ser, out, level: ser._serialize(obj.item(), out, level))


PEERS: dict[str, Callable[[PeerEvaluator, int, Path], None]] = {
    "bohb": run_bohb,
    "dehb": run_dehb,
    "smac": run_smac,
}
