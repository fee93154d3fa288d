"""The ``resnet-search`` command: parses arguments, calls the library, prints.

Every user error (a bad spec, flag, storage or data folder) is one line on stderr
and exit status 2; Ctrl-C is exit status 130 after a clean stop, and SIGTERM (what
``timeout``, Slurm and Kubernetes send) takes the same path and exits with status 143.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from search._version import __version__
from search.config import UserError
from search.config.errors import one_line

if TYPE_CHECKING:
    import optuna

    from search.engine.events import RunObserver

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended
MAX_COUNT = 1_000_000  # the most --samples, --top, --epochs... a flag takes: more would only hang
INTERRUPTED_HINT = "resnet-search: interrupted; finished trials are kept, run the same command to continue"
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
            code = args.handler(args) or 0
        except UserError as error:
            print(f"resnet-search: error: {one_line(str(error))}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print(TRAIN_INTERRUPTED_HINT if args.command == "train" else INTERRUPTED_HINT, file=sys.stderr)
            code = EXIT_INTERRUPTED
    return EXIT_TERMINATED if code == EXIT_INTERRUPTED and sigterm.received else code


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
    count.add_argument("--latency", action="store_true", help="measure latency as budget.latency says (its defaults)")
    count.set_defaults(handler=_count)

    train = commands.add_parser("train", help="train one fixed config")
    train.add_argument("spec", help="a fixed spec file (every leaf fixed), e.g. an exported best config")
    _data_flags(train)
    train.add_argument("--epochs", type=_positive_int, help="override train.epochs")
    train.add_argument("--seeds", type=_seed_list, default=None, help="comma-separated seeds, e.g. 0,1,2")
    train.add_argument("--out", default=None, help="output folder (default runs/<study name>)")
    train.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in the output folder")
    train.add_argument("--init", metavar="MODEL_DIR", default=None, help="start from a model folder's weights")
    train.set_defaults(handler=_train)

    run = commands.add_parser("run", help="search a space: Ray Tune trials, Optuna sampling and pruning")
    run.add_argument("spec", help="a spec file with a search space")
    _data_flags(run)
    run.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///studies/<name>.db)")
    run.add_argument("--address", default=None, help="join a Ray cluster (ray start --head) instead of a local Ray")
    run.add_argument("--dry-run", action="store_true", help="validate, survey the budget and estimate the cost")
    run.add_argument(
        "--timeout", type=_duration, default=None, help="time budget: 90s, 30m, 2h, 1d (beats study.timeout)"
    )
    run.add_argument("--n-trials", type=_positive_int, default=None, help="finished trials to reach (beats n_trials)")
    run.add_argument("--tensorboard", metavar="DIR", default=None, help="TensorBoard logs, one run per trial")
    run.add_argument("--mlflow", metavar="URI", default=None, help="MLflow tracking URI (file:mlruns, http://...)")
    run.add_argument("--keep", type=_count_arg, default=3, help="keep the best K trials' weights (default 3; 0: none)")
    run.set_defaults(handler=_run)
    _results_commands(commands)
    _model_commands(commands)
    return parser


def _model_commands(commands: argparse._SubParsersAction) -> None:
    """predict, evaluate, export-model: using a model folder (see :mod:`search.outputs.model`)."""
    predict = commands.add_parser("predict", help="classify images with a model folder")
    predict.add_argument("model_dir", help="a model folder (train, retrain and run --keep write them) or its .onnx")
    predict.add_argument("images", nargs="+", help="image files or folders of images")
    predict.add_argument("--top-k", type=_positive_int, default=1, help="classes shown per image (default 1)")
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    predict.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of a model")
    evaluate.add_argument("model_dir", help="a model folder, or an .onnx file export-model wrote")
    _data_flags(evaluate)
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test", help="default test")
    evaluate.add_argument("--out", default=None, help="JSON file (default MODEL_DIR/evaluation_<split>.json)")
    evaluate.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    evaluate.set_defaults(handler=_evaluate)

    export = commands.add_parser("export-model", help="a model folder as TorchScript or ONNX, checked")
    export.add_argument("model_dir", help="a model folder")
    export.add_argument("--format", choices=("torchscript", "onnx"), required=True)
    export.add_argument("--out", default=None, help="file to write (default MODEL_DIR/model.pt or model.onnx)")
    export.add_argument("--quantize", choices=("int8",), default=None, help="onnx: also a statically quantized file")
    export.add_argument(
        "--calibration", type=_positive_int, default=256, help="--quantize: training images to calibrate on (256)"
    )
    _data_flags(export)
    export.set_defaults(handler=_export_model)


def _results_commands(commands: argparse._SubParsersAction) -> None:
    """studies, dashboard, export, retrain, report: see :mod:`search.outputs`."""
    studies = commands.add_parser("studies", help="the studies in a storage: trials by state, best value, dates")
    studies.add_argument("--storage", default=None, help="Optuna storage URL (default: every studies/*.db here)")
    studies.set_defaults(handler=_studies)

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on a storage (Ctrl-C stops it)")
    _study_flags(dashboard)
    dashboard.add_argument("--port", type=_port, default=8080, help="TCP port (default 8080; 0: any free port)")
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
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 and <= {MAX_COUNT:,}, got {text!r}")
    return value


def _count_arg(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def _duration(text: str) -> float:
    from search.config import InvalidValue
    from search.config.units import parse_duration

    try:
        return parse_duration(text)
    except InvalidValue as error:
        raise argparse.ArgumentTypeError(error.message) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 0 to 65535, got {text!r}")
    return value


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or any(not 0 <= seed < 2**32 for seed in seeds):  # train.seed's bounds
        raise argparse.ArgumentTypeError(
            f"must be comma-separated whole numbers from 0 to {2**32 - 1} like 0,1,2, got {text!r}"
        )
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
    from search.budget.survey import measures_latency

    report = count_spec(spec, samples=args.samples, latency=args.latency or measures_latency(spec))
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
        init_from=args.init,
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
    tracking = replace(
        spec.tracking,
        tensorboard=args.tensorboard or spec.tracking.tensorboard,
        mlflow=args.mlflow or spec.tracking.mlflow,
    )
    with _progress_view() as view:
        summary = run_search(
            replace(spec, tracking=tracking),
            storage=args.storage,
            data_dir=args.data_dir,
            address=args.address,
            download=not args.no_download,
            log=_to_stderr,
            timeout=args.timeout,
            n_trials=args.n_trials,
            observers=[view],
            keep=args.keep,
        )
    print(summary_table(summary))
    if summary.interrupted:
        print(INTERRUPTED_HINT, file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


@contextmanager
def _progress_view() -> Iterator[RunObserver]:
    """The live table on a terminal; plain lines (one per finished trial, progress every 30 s) otherwise."""
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        from search.outputs.live import LiveTable

        with LiveTable() as table:
            yield table
    else:
        from search.engine.progress import PlainProgress

        yield PlainProgress(_to_stderr)


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
    from search.outputs.kept import kept_lines

    storage, study = _open_study(args)
    for path in export_best(study, storage, top=args.top, out_dir=args.out, pareto=args.pareto):
        print(path)
    for line in kept_lines(study):  # stderr: stdout stays one file per line
        _to_stderr(line)
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


def _predict(args: argparse.Namespace) -> int:
    from search.outputs.model import image_files, load_model

    model = load_model(args.model_dir, args.device)
    files, errors = image_files(args.images)
    predictions, unreadable = model.predict_files(files, top_k=args.top_k)
    errors += unreadable
    if args.json:
        print(json.dumps({"predictions": [p.as_dict() for p in predictions], "errors": errors}, indent=2))
    else:
        print("\n".join(p.line() for p in predictions))
    for error in errors:
        print(f"resnet-search: error: {error}", file=sys.stderr)
    return EXIT_USER_ERROR if errors else 0


def _evaluate(args: argparse.Namespace) -> int:
    from search.outputs.evaluate import evaluate_model

    evaluation, written = evaluate_model(
        args.model_dir,
        data_dir=args.data_dir,
        split=args.split,
        device=args.device,
        download=not args.no_download,
        out=args.out,
        log=_to_stderr,
    )
    print(f"{evaluation.table()}\n{written}")
    return 0


def _export_model(args: argparse.Namespace) -> int:
    from search.outputs.export_model import export_model

    if args.quantize and args.format != "onnx":
        raise UserError(f"--quantize {args.quantize}: needs --format onnx")
    check = export_model(args.model_dir, format=args.format, out=args.out)
    print(check.line())
    if args.quantize:
        from search.outputs.quantize import quantize_model

        quantized = quantize_model(
            args.model_dir,
            check.path,
            quantize=args.quantize,
            calibration=args.calibration,
            data_dir=args.data_dir,
            download=not args.no_download,
            log=_to_stderr,
        )
        print("\n".join(quantized.lines()))
    return 0


def _report(args: argparse.Namespace) -> int:
    from search.outputs.report import write_report

    storage, study = _open_study(args)
    files = write_report(study, storage, args.out)
    print(f"{files.html}\n{files.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
