"""Search quality: our strategies and the peers (BOHB, DEHB, SMAC3, Optuna's Hyperband, Ray
Tune's ASHA) at equal epoch budgets, over several search seeds (the package
``benchmarks/search_quality``; docs/search-quality.md).

    python benchmarks/search_efficiency.py [--quick] [--out DIR] [--strategies a,c,g]
        [--budgets 60,180] [--tuning-seeds 0,1,2,3,4] [--held-out-seeds 5,6,7,8,9] [--report-only]

Finished runs are kept in ``--out``'s ``runs/`` (default ``benchmarks/out/search_quality``)
and read back, so the same command again resumes. Writes ``report.md``, ``summary.csv``,
``curves.csv``, ``results.json`` and the anytime figures ``anytime_<budget>.html`` / ``.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs as a script from any folder

from benchmarks.search_quality.main import main  # noqa: E402

if __name__ == "__main__":
    main()
