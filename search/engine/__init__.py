"""The engine: runs a search. The bridge between the Optuna study and Ray Tune, Tune's
``Searcher``/``TrialScheduler`` adapters (the one Ray-only module), the trainable a worker
runs, the checks before a run, the run loop, and the dry-run plan.

The engine never imports :mod:`search.outputs`: what it writes per trial comes from that
trial's own record."""
