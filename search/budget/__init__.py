"""The budget layer: what a config costs, known before it trains.

* :mod:`~search.budget.counts`: parameters and FLOPs, exact from the config (the fast count)
  and fvcore's reference count of a built model; the parameter and FLOP limits.
* :mod:`~search.budget.memory`: peak activation memory and model size at inference, exact
  from the config, and their reference measured on a built model; their limits.
* :mod:`~search.budget.latency`: latency measured on this machine (a built model with random
  weights, exported or run eagerly, timed); its limit.
* :mod:`~search.budget.survey`: ``resnet-search count``: a config's or a space's costs.
"""

from search.budget.counts import Counts, check_budget, constraint_values, count_model, fast_count
from search.budget.memory import Footprint, check_footprint, footprint, footprint_constraints, measure_footprint
from search.budget.survey import CountReport, count_spec

__all__ = [
    "Counts",
    "CountReport",
    "Footprint",
    "check_budget",
    "check_footprint",
    "constraint_values",
    "count_model",
    "count_spec",
    "fast_count",
    "footprint",
    "footprint_constraints",
    "measure_footprint",
]
