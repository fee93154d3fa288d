"""How long the README's Python example takes on the real CIFAR-10, as a user runs it: its code
block taken from README.md, run in a fresh interpreter in an empty folder holding the archive
it names, from an empty data cache (the archive's decode counts). The README quotes the time.

    python benchmarks/readme_example.py [--archive PATH]

``tests/test_readme_example.py`` checks that the same block runs as written (on tiny images).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import DEFAULT_ARCHIVE  # noqa: E402
from test_readme_example import DATA_LINE, check_finished, readme_example, run_example  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="CIFAR-10 as a .tar.gz")
    args = parser.parse_args()
    if not args.archive.is_file():
        sys.exit(f"no CIFAR-10 archive at {args.archive} (../shared/data beside the repository, or --archive)")
    name = DATA_LINE.search(readme_example())["name"]  # type: ignore[index]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copyfile(args.archive, folder / name)
        start = time.monotonic()
        result = run_example(folder, folder / "cache")
        seconds = time.monotonic() - start
        check_finished(result, folder)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"the README example on CIFAR-10: {seconds:.0f} s on {cores} cores, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
