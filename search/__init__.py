"""resnet-search: find the best ResNet for your images under a hard parameter budget.

The public Python API, what the CLI itself calls::

    import search

    spec = search.load_spec("spaces/smoke.yaml")
    print(search.count_spec(spec).table())
    summary = search.run_search(spec, data_dir="data/cifar10")
    study = search.load_study("sqlite:///studies/smoke.db", "smoke")
    board = search.retrain(study, top=1, seeds=(0, 1))
    model = search.load_model("runs/smoke/retrain/trial3/seed0")
    print(model.predict(["cat.jpg"])[0].label)

Names load on first use, so ``import search`` stays light (no torch, no Ray).
"""

from __future__ import annotations

import importlib
from typing import Any

from search._version import __version__

_API = {
    "load_spec": "search.config",
    "parse_spec": "search.config",
    "UserError": "search.config",
    "build_model": "search.models",
    "count_spec": "search.budget",
    "fast_count": "search.budget",
    "load_dataset": "search.data",
    "train": "search.train",
    "train_spec": "search.train",
    "load_study": "search.study.trials",
    "resolve_storage": "search.study.storage",
    "run_search": "search.engine.run",
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
