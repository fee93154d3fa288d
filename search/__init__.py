"""resnet-search: find the best ResNet for your images under a hard parameter budget.

The public Python API, what the CLI itself calls::

    import search

    spec = search.load_spec("spaces/smoke.yaml")
    print(search.count_spec(spec).table())
    summary = search.run_search(spec, search.RunOptions(data_dir="data/cifar10"))
    study = search.load_study("sqlite:///studies/smoke.db", "smoke")
    board = search.retrain(study, search.SeedOptions(seeds=(0, 1)), top=1)
    model = search.load_model("runs/smoke/retrain/trial3/seed0")
    print(model.predict(["cat.jpg"])[0].label)

Names load on first use, so ``import search`` stays light (no torch, no Ray).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from search._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name loads on first use
    from search.budget import count_spec, fast_count
    from search.config import Spec, UserError, load_spec, parse_spec
    from search.data import load_dataset
    from search.engine.events import RunObserver
    from search.engine.options import RunOptions
    from search.engine.plan import plan_search
    from search.engine.run import SearchSummary, run_search
    from search.models import build_model
    from search.outputs.dashboard import serve_dashboard
    from search.outputs.evaluate import evaluate_model
    from search.outputs.export import export_best
    from search.outputs.export_model import export_model
    from search.outputs.model import load_model
    from search.outputs.report import write_report
    from search.outputs.retrain import retrain
    from search.outputs.studies import list_studies
    from search.outputs.summary import summary_table
    from search.study.storage import resolve_storage
    from search.study.trials import load_study
    from search.train import SeedOptions, train, train_spec

_API = {
    "load_spec": "search.config",
    "parse_spec": "search.config",
    "Spec": "search.config",
    "UserError": "search.config",
    "build_model": "search.models",
    "count_spec": "search.budget",
    "fast_count": "search.budget",
    "load_dataset": "search.data",
    "train": "search.train",
    "train_spec": "search.train",
    "SeedOptions": "search.train",
    "load_study": "search.study.trials",
    "resolve_storage": "search.study.storage",
    "run_search": "search.engine.run",
    "SearchSummary": "search.engine.run",
    "RunObserver": "search.engine.events",
    "RunOptions": "search.engine.options",
    "plan_search": "search.engine.plan",
    "summary_table": "search.outputs.summary",
    "export_best": "search.outputs.export",
    "retrain": "search.outputs.retrain",
    "write_report": "search.outputs.report",
    "list_studies": "search.outputs.studies",
    "serve_dashboard": "search.outputs.dashboard",
    "load_model": "search.outputs.model",
    "evaluate_model": "search.outputs.evaluate",
    "export_model": "search.outputs.export_model",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
