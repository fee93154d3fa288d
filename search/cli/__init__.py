"""The ``resnet-search`` command: parses arguments, calls the library, prints.

Every user error (a bad spec, flag, storage or data folder) is one line on stderr
and exit status 2; Ctrl-C is exit status 130 after a clean stop, and SIGTERM (what
``timeout``, Slurm and Kubernetes send) takes the same path and exits with status 143.

The flags and what each command takes are two tables (:mod:`search.cli.flags`), the parser
is built from them (:mod:`search.cli.parser`), and each command's work is in
:mod:`search.cli.commands`.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from collections.abc import Sequence

from search.cli.commands import EXIT_INTERRUPTED, EXIT_USER_ERROR, INTERRUPTED_HINT, check_device
from search.cli.flags import FLAGS
from search.cli.parser import build_parser
from search.config import UserError
from search.config.errors import one_line

__all__ = ["build_parser", "main"]

EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended
TRAIN_INTERRUPTED_HINT = (
    "resnet-search: interrupted; the checkpoint of the last finished epoch is kept: "
    "run the same command with --resume to continue"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    with _SigtermAsCtrlC() as sigterm:
        try:
            check_device(args)
            code = args.handler(args) or 0
        except UserError as error:
            print(f"resnet-search: error: {in_flags(one_line(str(error)))}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print(TRAIN_INTERRUPTED_HINT if args.command == "train" else INTERRUPTED_HINT, file=sys.stderr)
            code = EXIT_INTERRUPTED
    return EXIT_TERMINATED if code == EXIT_INTERRUPTED and sigterm.received else code


# The library names its parameters as Python does (``data_dir=D``); on the command line that
# is the flag (``--data-dir D``).
_PARAMETER = re.compile(
    r"\b(" + "|".join(flag[2:].replace("-", "_") for flag in FLAGS) + r")=(?:'([^']*)'|\"([^\"]*)\")?"
)


def in_flags(message: str) -> str:
    """``message`` with each Python argument of a flag (``data_dir=D``, ``device='cuda'``) named
    as the flag (``--data-dir D``, ``--device cuda``)."""

    def flag(match: re.Match[str]) -> str:
        name, value = "--" + match[1].replace("_", "-"), match[2] if match[2] is not None else match[3]
        if value is not None:
            return f"{name} {value}"
        following = match.string[match.end() : match.end() + 1]
        return f"{name} " if following.strip(" ,;)") else name  # data_dir=/x, not "seeds= needs"

    return _PARAMETER.sub(flag, message)


class _SigtermAsCtrlC:
    """While a command runs, SIGTERM does what Ctrl-C does: whatever SIGINT's handler is then
    (Tune's, which ends the running trials and returns; else Python's KeyboardInterrupt), so
    trials are recorded, Ray is shut down and the summary printed. The run re-installs this
    handler after ``ray.init``, which replaces it (see :func:`search.engine.ray_runtime.ray_session`).
    """

    def __init__(self) -> None:
        self.received = False
        self.previous: object = None

    def __enter__(self) -> _SigtermAsCtrlC:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: object) -> None:
        self.received = True
        on_sigint = signal.getsignal(signal.SIGINT)
        if not callable(on_sigint):  # ignored (started with nohup ... &) or the OS default
            raise KeyboardInterrupt
        on_sigint(signal.SIGINT, frame)  # type: ignore[arg-type]


def _quiet_libraries() -> None:
    """The progress lines are ours: Optuna's INFO line per trial would bury them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
