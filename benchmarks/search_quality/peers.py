"""The peers, each through its own package's API, on exactly our objective.

- Space: our spec's space (:mod:`search.config.distributions`) mapped to a ConfigSpace
  (:func:`config_space`): a categorical per choice, an integer or float range per range
  (log scale kept), a categorical per conditional choice whose options' parameters are
  active only under their label (ConfigSpace conditions). Parameter names are Optuna's.
- Fidelity: epochs of the space's own trial (5), from ``epochs / eta**2`` to ``epochs``
  with ``eta = 3`` as each method computes its rungs; a budget becomes ``round(budget)``
  epochs (at least 1): rungs of 1, 2 and 5 epochs, where our successive halving has 1
  and 3 (a geometric ladder cannot hold 1, 3 and 5).
- Cost: every evaluation runs through :class:`PeerEvaluator`, which tells our
  StudyBridge about it as ``resnet-search run`` would (the budget check, every epoch's
  report, the outcome), so a peer's trials land in the same records as ours. A config
  evaluated again at a larger budget continues from where it stopped (it pays only the
  extra epochs, as a promotion in our successive halving does); an over-budget config is
  told the worst value (accuracy 0) at zero cost. One trial at a time.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from search.config import Spec
from search.config.distributions import Branches, Categorical, Fixed, Node, Range, Sequence, Struct
from search.data import load_dataset
from search.engine.bridge import StudyBridge, TrialSetup
from search.engine.samplers import create_study

from .ours import Rejections, Running, end_trial, epoch_report, final_report
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


# --------------------------------------------------------------------------- one evaluation


class PeerEvaluator:
    """A peer's evaluations of configs at a budget in epochs, through our StudyBridge.

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
        self.paused = PausedSessions()
        self.space, self.codec = config_space(self.spec, seed)

    @property
    def exhausted(self) -> bool:
        return self.run.exhausted

    @property
    def min_fidelity(self) -> float:
        return self.epochs / ETA**2

    def evaluate(self, config: Any, budget: float) -> tuple[float, int]:
        """Train ``config`` to ``budget`` epochs (continuing a paused run of it if there is one).

        Returns:
            The validation accuracy at that epoch (``WORST`` for an over-budget or failed
            config) and the epochs it cost.
        """
        if self.run.exhausted:  # a peer's last request after the budget ran out: nothing trains
            return WORST, 0
        params = self.codec.decode(config)
        epochs = min(fidelity_epochs(budget), self.epochs)
        spent = self.run.epochs_spent
        self.study.enqueue_trial(params)
        job = self.bridge.next_job()
        self.rejections.record(self.run)
        if job is None:  # over the budget: the bridge recorded it
            self.bridge.stop_reason, self.bridge.rejections_in_a_row = None, 0
            return WORST, 0
        key = tuple(sorted(params.items()))
        session = self.paused.take(key)
        if session is not None and (session.epoch > epochs or session.done):  # a smaller budget: afresh
            session.close(stop=True)
            session = None
        if session is None:
            session = EpochSession(job.trial, self.data)
        slot = Running(job, session, spent)
        for trained in session.history:  # what it already trained: reported again, free
            self.bridge.report(job.number, epoch_report(trained))
        while session.epoch < epochs and not self.run.exhausted:
            metrics = session.advance()
            if metrics is None:
                break
            self.run.spend_epoch()
            self.bridge.report(job.number, epoch_report(metrics))
        reached = session.epoch >= epochs and session.error is None
        value = session.history[epochs - 1].val_acc if reached else WORST
        if reached and epochs < self.epochs:
            self._pause(slot, key)
        else:
            end_trial(self.bridge, slot, self.run, self.epochs, pruned=False)
        return value, self.run.epochs_spent - spent

    def _pause(self, slot: Running, key: tuple) -> None:
        """The peer stopped the trial at one of its rungs: PRUNED in the study, kept for a promotion."""
        self.bridge.mark_pruned(slot.job.number)
        self.bridge.finish(slot.job.number, final_report(slot.session, self.epochs, pruned=True), error=False)
        self.run.ended(slot.started, "pruned")
        self.paused.keep(key, slot.session)

    def close(self, start: float) -> SearchRun:
        self.paused.close()
        self.run.wall_s = time.monotonic() - start
        return self.run


# --------------------------------------------------------------------------- the peers


def search_with_peer(settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun:
    """One search by a peer package until the epoch budget is spent."""
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
        optimizer.tell(job, {"fitness": 1.0 - value, "cost": float(cost)})


def run_smac(evaluator: PeerEvaluator, seed: int, scratch: Path) -> None:
    """SMAC3's multi-fidelity facade (Hyperband with a random forest) through its ask/tell interface.

    ``n_trials`` is the epoch budget (every evaluation but a continued one costs an epoch
    at least); SMAC sizes its initial design from it.
    """
    from smac import MultiFidelityFacade, Scenario
    from smac.runhistory.dataclasses import TrialValue

    scenario = Scenario(
        evaluator.space,
        deterministic=True,
        n_trials=evaluator.run.budget_epochs,
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
            return {"loss": 1.0 - value, "info": {"epochs": cost}}

    class BudgetedBOHB(BOHB):
        """BOHB that starts nothing more once the epoch budget is spent."""

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
        optimizer.run(n_iterations=10 * evaluator.run.budget_epochs)
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
