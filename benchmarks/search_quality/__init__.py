"""Search quality: best validation accuracy per epoch of compute, our strategies against the
peers a user would pick instead (BOHB, DEHB, SMAC3, Optuna's Hyperband, Ray Tune's ASHA), at
equal epoch budgets, over several search seeds.

The task is ``spaces/cifar_cpu.yaml`` (the main space scaled to a 2-core CPU) with a
5,000-image validation split. Every strategy gets the same compute, counted in training
epochs: a pruned trial costs the epochs it ran, an over-budget sample costs nothing, and
the trials running when the budget runs out are cut. See docs/search-quality.md.

Modules: :mod:`.settings` (what runs), :mod:`.records` (what a run leaves), :mod:`.sessions`
(trials paused between epochs), :mod:`.ours` (our StudyBridge), :mod:`.tune_asha` (Ray Tune),
:mod:`.peers` (BOHB, DEHB, SMAC3), :mod:`.store` (runs on disk), :mod:`.retraining`,
:mod:`.analysis`, :mod:`.report`, :mod:`.noise` (the validation split's noise), :mod:`.main`.
"""
