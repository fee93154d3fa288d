"""Finished searches on disk, kept in git so that they survive a change of machine: a search that
an earlier benchmark run finished with the same spec, strategy and budget (its fingerprint) is
read back (runs are deterministic), else run and saved, one small JSON per run
(``<records>/runs/<key>_b<budget>_seed<N>.json``), written atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .records import SearchRun
from .settings import Settings, Strategy, strategy_spec


def run_path(settings: Settings, strategy: Strategy, seed: int, budget: int) -> Path:
    return settings.records / "runs" / f"{strategy.key}_b{budget}_seed{seed}.json"


def fingerprint(settings: Settings, strategy: Strategy, seed: int, budget: int) -> str:
    """What decides a run's result: the spec as the strategy runs it (relative paths only), the
    budget, the engine, the concurrency, a peer's rungs and the prior's design files."""
    spec = strategy_spec(settings, strategy, seed, budget)
    designs = spec.study.prior.designs if spec.study.prior is not None else ()
    texts = [(Path(spec.source).parent / name).read_text(encoding="utf-8") for name in designs]
    parts = [spec.text, str(budget), strategy.engine, str(strategy.concurrency), repr(strategy.rungs), *texts]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def load_run(settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun | None:
    """The saved run, or None if there is none for this spec, strategy and budget (or it is unreadable)."""
    path = run_path(settings, strategy, seed, budget)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["fingerprint"] != fingerprint(settings, strategy, seed, budget):
            return None
        return SearchRun(**saved["run"])
    except (ValueError, KeyError, TypeError):  # a damaged record is run again
        return None


def save_run(settings: Settings, strategy: Strategy, run: SearchRun) -> Path:
    """Write the run's record atomically: a killed benchmark leaves no half-written one."""
    path = run_path(settings, strategy, run.seed, run.budget)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "fingerprint": fingerprint(settings, strategy, run.seed, run.budget),
        "repeats": run.repeats,
        "run": run.compact(),
    }
    partial = path.with_suffix(".json.part")
    partial.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def saved_search(settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun:
    """The search's result from the records if an earlier benchmark run finished it, else the
    search, run and saved (and read back, so that both paths give the same rounded numbers)."""
    run = load_run(settings, strategy, seed, budget)
    if run is not None:
        return run
    save_run(settings, strategy, search(settings, strategy, seed, budget))
    loaded = load_run(settings, strategy, seed, budget)
    assert loaded is not None, "a record just written reads back"
    return loaded


def search(settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun:
    """Run one search with the strategy's engine."""
    if strategy.engine == "tune":
        from .tune_asha import search_with_tune

        return search_with_tune(settings, strategy, seed, budget)
    if strategy.is_peer:
        from .peers import search_with_peer

        return search_with_peer(settings, strategy, seed, budget)
    from .ours import search_with_bridge

    return search_with_bridge(settings, strategy, seed, budget)
