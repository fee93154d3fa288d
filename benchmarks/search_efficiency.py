"""Search quality: our strategies and the peers (BOHB, DEHB, SMAC3, Optuna's Hyperband, Ray
Tune's ASHA) at equal compute in full-epoch equivalents, over several search seeds (the package
``benchmarks/search_quality``; docs/search-quality.md).

    python benchmarks/search_efficiency.py --plan round3 --background   # round 3's queue, detached
    python benchmarks/search_efficiency.py --report-only                # report.md from the records
    python benchmarks/search_efficiency.py [--quick] [--out DIR] [--records DIR] [--strategies c,c-old,i]
        [--budgets 60,180] [--tuning-seeds 0,1,2,3,4] [--held-out-seeds 5,6,7,8,9]

Each finished run's record is kept in ``--records`` (default ``benchmarks/results/search_quality``,
kept in git) and read back, so the same command again resumes. Writes ``report.md``,
``summary.csv`` and ``anytime_<budget>.png`` there, and ``curves.csv``, ``results.json`` and
``anytime_<budget>.html`` into ``--out`` (default ``benchmarks/out/search_quality``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs as a script from any folder

from benchmarks.search_quality.main import main  # noqa: E402

if __name__ == "__main__":
    main()
