"""The ``resnet-search`` command: parses arguments, calls the library, prints.

Every user error (a bad spec, flag, storage or data folder) is one line on stderr
and exit status 2; Ctrl-C is exit status 130 after a clean stop.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from search._version import __version__
from search.config import UserError

if TYPE_CHECKING:
    import optuna

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
INTERRUPTED_HINT = "resnet-search: interrupted; finished trials are kept, run the same command to continue"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return args.handler(args) or 0
    except UserError as error:
        print(f"resnet-search: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(INTERRUPTED_HINT, file=sys.stderr)
        return EXIT_INTERRUPTED


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is under --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="resnet-search",
        description="Search ResNet architectures and training recipes under a hard parameter budget.",
    )
    parser.add_argument("--version", action="version", version=f"resnet-search {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    count = commands.add_parser("count", help="parameters and FLOPs of a config, or of a space's extremes")
    count.add_argument("spec", help="a spec file (fixed config or search space)")
    count.add_argument("--json", action="store_true", help="print one JSON object")
    count.add_argument("--samples", type=_positive_int, default=2000, help="samples to survey a space (default 2000)")
    count.set_defaults(handler=_count)

    train = commands.add_parser("train", help="train one fixed config")
    train.add_argument("spec", help="a fixed spec file (every leaf fixed), e.g. an exported best config")
    _data_flags(train)
    train.add_argument("--epochs", type=_positive_int, help="override train.epochs")
    train.add_argument("--seeds", type=_seed_list, default=None, help="comma-separated seeds, e.g. 0,1,2")
    train.add_argument("--out", default=None, help="output folder (default runs/<study name>)")
    train.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in the output folder")
    train.set_defaults(handler=_train)

    run = commands.add_parser("run", help="search a space: Ray Tune trials, Optuna sampling and pruning")
    run.add_argument("spec", help="a spec file with a search space")
    _data_flags(run)
    run.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///studies/<name>.db)")
    run.add_argument("--address", default=None, help="join a Ray cluster (ray start --head) instead of a local Ray")
    run.add_argument("--dry-run", action="store_true", help="validate, survey the budget and estimate the cost")
    run.set_defaults(handler=_run)
    _results_commands(commands)
    return parser


def _results_commands(commands: argparse._SubParsersAction) -> None:
    """studies, dashboard, export, retrain, report: see :mod:`search.outputs`."""
    studies = commands.add_parser("studies", help="the studies in a storage: trials by state, best value, dates")
    studies.add_argument("--storage", default=None, help="Optuna storage URL (default: every studies/*.db here)")
    studies.set_defaults(handler=_studies)

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on a storage (Ctrl-C stops it)")
    _study_flags(dashboard)
    dashboard.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0: any free port)")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)"
    )
    dashboard.set_defaults(handler=_dashboard)

    export = commands.add_parser("export", help="write the best trials' configs as fixed spec files")
    _study_flags(export)
    export.add_argument("--top", type=_positive_int, default=1, help="how many of the best complete trials (default 1)")
    export.add_argument("--out", default=None, help="output folder (default studies/<study>/export)")
    export.add_argument("--pareto", action="store_true", help="the Pareto front of a multi-objective study")
    export.set_defaults(handler=_export)

    retrain = commands.add_parser("retrain", help="retrain the best configs on train+val over seeds, test them")
    _study_flags(retrain)
    retrain.add_argument("--top", type=_positive_int, required=True, help="how many of the best complete trials")
    retrain.add_argument("--seeds", type=_seed_list, default=(0,), help="comma-separated seeds (default 0)")
    retrain.add_argument("--epochs", type=_positive_int, help="override train.epochs")
    _data_flags(retrain)
    retrain.add_argument("--out", default=None, help="output folder (default runs/<study>/retrain)")
    retrain.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    retrain.set_defaults(handler=_retrain)

    report = commands.add_parser("report", help="a self-contained HTML report of a study, and trials.csv")
    _study_flags(report)
    report.add_argument("--out", default=None, help="HTML file (default studies/<study>/report.html)")
    report.set_defaults(handler=_report)


def _data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="dataset folder or archive (beats data.root)")
    parser.add_argument("--no-download", action="store_true", help="never download a known dataset")


def _study_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage", default=None, help="Optuna storage URL (default studies/<study>.db, or the only studies/*.db)"
    )
    parser.add_argument("--study", default=None, help="study name (may be left out when the storage holds one)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers like 0,1,2, got {text!r}")
    return seeds


def _quiet_libraries() -> None:
    """The progress lines are ours: Optuna's INFO line per trial would bury them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------- commands


def _count(args: argparse.Namespace) -> int:
    from search.config import load_spec

    spec = load_spec(args.spec)
    from search.budget import count_spec  # torch loads only once the spec is known to be good

    report = count_spec(spec, samples=args.samples)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
    return 0


def _train(args: argparse.Namespace) -> int:
    from search.config import load_spec
    from search.train import train_spec

    summary = train_spec(
        load_spec(args.spec),
        data_dir=args.data_dir,
        download=not args.no_download,
        epochs=args.epochs,
        seeds=args.seeds,
        out_dir=args.out,
        device=args.device,
        resume=args.resume,
        log=_to_stderr,
    )
    print(summary)
    return 0


def _run(args: argparse.Namespace) -> int:
    from search.config import load_spec
    from search.engine.plan import plan_search
    from search.engine.run import run_search
    from search.outputs.summary import summary_table

    spec = load_spec(args.spec)
    if args.dry_run:
        print(plan_search(spec, data_dir=args.data_dir))
        return 0
    summary = run_search(
        spec,
        storage=args.storage,
        data_dir=args.data_dir,
        address=args.address,
        download=not args.no_download,
        log=_to_stderr,
    )
    print(summary_table(summary))
    if summary.interrupted:
        print(INTERRUPTED_HINT, file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _to_stderr(line: str) -> None:
    """Progress lines go to stderr: stdout keeps the command's result (a table, JSON, paths)."""
    print(line, file=sys.stderr, flush=True)


def _open_study(args: argparse.Namespace) -> tuple[str, optuna.Study]:
    from search.study.storage import resolve_storage
    from search.study.trials import load_study

    storage = resolve_storage(args.storage, args.study)
    return storage, load_study(storage, args.study)


def _studies(args: argparse.Namespace) -> int:
    from search.outputs.studies import list_studies, studies_table

    print(studies_table(list_studies(args.storage)))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from search.outputs.dashboard import serve_dashboard
    from search.study.storage import resolve_storage

    serve_dashboard(
        resolve_storage(args.storage, args.study),
        study_name=args.study,
        host=args.host,
        port=args.port,
        log=lambda line: print(line, flush=True),
    )
    print("dashboard stopped", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from search.outputs.export import export_best

    storage, study = _open_study(args)
    for path in export_best(study, storage, top=args.top, out_dir=args.out, pareto=args.pareto):
        print(path)
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from search.outputs.retrain import retrain

    _, study = _open_study(args)
    board = retrain(
        study,
        top=args.top,
        seeds=args.seeds,
        epochs=args.epochs,
        data_dir=args.data_dir,
        download=not args.no_download,
        out_dir=args.out,
        device=args.device,
        log=_to_stderr,
    )
    print(board.table())
    return 0


def _report(args: argparse.Namespace) -> int:
    from search.outputs.report import write_report

    storage, study = _open_study(args)
    files = write_report(study, storage, args.out)
    print(f"{files.html}\n{files.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
