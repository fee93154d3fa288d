"""Finished searches on disk: a search that an earlier benchmark run finished with the same
spec, strategy and budget is read back (runs are deterministic), else run and saved."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .records import SearchRun
from .settings import Settings, Strategy, strategy_spec


def run_path(settings: Settings, strategy: Strategy, seed: int, budget: int) -> Path:
    return settings.out / "runs" / f"{strategy.key}_b{budget}_seed{seed}.json"


def fingerprint(settings: Settings, strategy: Strategy, seed: int, budget: int) -> str:
    spec = strategy_spec(settings, strategy, seed, budget)
    text = f"{spec.text}|{budget}|{strategy.engine}|{strategy.concurrency}"
    return hashlib.sha256(text.encode()).hexdigest()


def load_run(settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun | None:
    """The saved run, or None if there is none for this spec, strategy and budget."""
    path = run_path(settings, strategy, seed, budget)
    if not path.exists():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved["fingerprint"] != fingerprint(settings, strategy, seed, budget):
        return None
    return SearchRun(**saved["run"])


def saved_search(settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun:
    """The search's result from ``runs/`` if an earlier benchmark run finished it, else the search, run and saved."""
    run = load_run(settings, strategy, seed, budget)
    if run is not None:
        return run
    run = search(settings, strategy, seed, budget)
    path = run_path(settings, strategy, seed, budget)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.part")
    document = {"fingerprint": fingerprint(settings, strategy, seed, budget), "run": asdict(run)}
    partial.write_text(json.dumps(document), encoding="utf-8")
    partial.replace(path)  # a killed benchmark leaves no half-written run
    return run


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
