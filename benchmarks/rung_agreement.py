"""How well each cheap look at a config ranks it (the package ``benchmarks/search_quality``,
module ``agreement``; docs/search-quality.md).

    python benchmarks/rung_agreement.py [--ladder c|c-8px] [--configs 30] [--seed 0] [--data-dir D]
    python benchmarks/rung_agreement.py --report-only [--ladder c-8px] [--seed 0]   # from the recorded CSV
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs as a script from any folder

from benchmarks.search_quality.agreement import main  # noqa: E402

if __name__ == "__main__":
    main()
