"""What each ``resnet-search`` command does: read its arguments, call the library, print the
result (as a table, or as one JSON object with ``--json``). Progress and notes go to stderr."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.config import UserError
from search.config.errors import one_line
from search.config.files import check_output_folder

if TYPE_CHECKING:
    import optuna

    from search.engine.events import RunObserver
    from search.train.options import SeedOptions

EXIT_FAILED = 1  # the input was fine, the work was not: a training that diverged
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
INTERRUPTED_HINT = "resnet-search: interrupted; finished trials are kept, run the same command to continue"
# --out once named a file here; that spelling still works for one release (see out_folder).
OLD_OUT_FILES = {"report": (".html", ".htm"), "evaluate": (".json",), "export-model": (".pt", ".onnx")}


def to_stderr(line: str) -> None:
    """Progress lines go to stderr: stdout keeps the command's result (a table, JSON, paths)."""
    print(line, file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    def plain(item: Any) -> Any:
        return item.isoformat() if isinstance(item, dt.datetime) else str(item)

    print(json.dumps(value, indent=2, default=plain))


def show(args: argparse.Namespace, result: Any, text: str) -> None:
    """A command's result: ``result`` as JSON with ``--json``, else ``text``."""
    if args.json:
        print_json(result)
    else:
        print(text)


def out_folder(args: argparse.Namespace) -> Path | None:
    """``--out``, a folder. The old spelling of a command whose ``--out`` named a file
    (``report --out report.html``) still works for one release: the file's folder, with a note."""
    if args.out is None:
        return None
    if not args.out:
        return check_output_folder(args.out)  # one line: an empty path is no folder
    out = Path(args.out)
    if out.suffix.lower() in OLD_OUT_FILES.get(args.command, ()) and not out.is_dir():
        to_stderr(
            f"resnet-search {args.command}: note: --out takes a folder now (the file names in it are fixed); "
            f"writing into {out.parent}; give --out {out.parent} (a file name here stops working in the next release)"
        )
        return out.parent
    return out


def check_device(args: argparse.Namespace) -> None:
    """``--device cuda`` means a GPU: without one here (and no cluster to find one in), one line."""
    if getattr(args, "device", None) == "cuda" and not getattr(args, "address", None):
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: this machine has no CUDA GPU; use --device cpu, or leave it out")


def count(args: argparse.Namespace) -> int:
    from search.config import load_spec

    spec = load_spec(args.spec)
    from search.budget import count_spec  # torch loads only once the spec is known to be good
    from search.budget.survey import measures_latency

    report = count_spec(spec, samples=args.samples, latency=args.latency or measures_latency(spec))
    show(args, report.as_dict(), report.table())
    return 0


def train(args: argparse.Namespace) -> int:
    from search.config import load_spec
    from search.train import train_spec

    summary = train_spec(load_spec(args.spec), _seed_options(args), resume=args.resume, init_from=args.init)
    print(summary)
    for reason in summary.diverged:
        print(f"resnet-search: error: {one_line(reason)}", file=sys.stderr)
    return EXIT_FAILED if summary.diverged else 0


def _seed_options(args: argparse.Namespace) -> SeedOptions:
    """The flags ``train`` and ``retrain`` share, as the library takes them."""
    from search.train.options import SeedOptions  # torch: only training needs it

    return SeedOptions(**_where(args), epochs=args.epochs, seeds=args.seeds, out_dir=args.out)


def _where(args: argparse.Namespace) -> dict[str, Any]:
    """What ``run``, ``train`` and ``retrain`` take alike: where the data is, where to train, the log."""
    return {"data_dir": args.data_dir, "download": not args.no_download, "device": args.device, "log": to_stderr}


def run(args: argparse.Namespace) -> int:
    from search.config import load_spec
    from search.engine.checks import with_device
    from search.engine.options import RunOptions
    from search.engine.plan import plan_search
    from search.engine.run import run_search
    from search.outputs.summary import summary_table

    spec = load_spec(args.spec)
    if args.dry_run:
        print(plan_search(with_device(spec, args.device), data_dir=args.data_dir))
        return 0
    tracking = replace(
        spec.tracking,
        tensorboard=args.tensorboard or spec.tracking.tensorboard,
        mlflow=args.mlflow or spec.tracking.mlflow,
    )
    with _progress_view() as view:
        options = RunOptions(
            **_where(args),
            storage=args.storage,
            address=args.address,
            timeout=args.timeout,
            n_trials=args.n_trials,
            keep=args.keep,
            observers=[view],
        )
        summary = run_search(replace(spec, tracking=tracking), options)
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

        yield PlainProgress(to_stderr)


def spaces(args: argparse.Namespace) -> int:
    from search.config.presets import copy_preset, preset_description, preset_folder, preset_names

    if args.name is None and args.out is not None:
        raise UserError("--out: name the preset to copy, e.g. resnet-search spaces cifar_5m --out DIR")
    if args.name is None:
        files = {name: preset_folder() / f"{name}.yaml" for name in preset_names()}
        presets = [{"name": n, "description": preset_description(f), "file": str(f)} for n, f in files.items()]
        width = max(map(len, files))
        show(args, {"presets": presets}, "\n".join(f"{p['name']:<{width}}  {p['description']}" for p in presets))
        return 0
    if args.out is not None and Path(args.out).suffix in (".yaml", ".yml") and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: --out is a folder; the copy is named {Path(args.name).stem}.yaml in it")
    written = copy_preset(args.name, args.out if args.out is not None else ".")
    show(args, {"file": str(written)}, str(written))
    return 0


def _open_study(args: argparse.Namespace) -> tuple[str, optuna.Study]:
    from search.study.storage import resolve_storage
    from search.study.trials import load_study

    storage = resolve_storage(args.storage, args.study)
    return storage, load_study(storage, args.study)


def studies(args: argparse.Namespace) -> int:
    from search.outputs.studies import list_studies, studies_table

    rows = list_studies(args.storage)
    show(args, {"studies": [asdict(row) for row in rows]}, studies_table(rows))
    return 0


def dashboard(args: argparse.Namespace) -> int:
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


def export(args: argparse.Namespace) -> int:
    from search.outputs.export import export_best
    from search.outputs.kept import kept_lines
    from search.study.records import kept_models

    storage, study = _open_study(args)
    paths = export_best(study, storage, top=args.top, out_dir=args.out, pareto=args.pareto)
    if args.json:
        print_json(
            {"files": [str(p) for p in paths], "kept_models": {str(n): f for n, f in kept_models(study).items()}}
        )
        return 0
    for path in paths:
        print(path)
    for line in kept_lines(study):  # stderr: stdout stays one file per line
        to_stderr(line)
    return 0


def retrain(args: argparse.Namespace) -> int:
    from search.outputs.retrain import retrain

    _, study = _open_study(args)
    board = retrain(study, _seed_options(args), top=args.top)
    show(args, {**board.as_dict(), "csv": str(board.csv_path)}, board.table())
    if board.rows and not any(row.trained_seeds for row in board.rows):
        print("resnet-search: error: every retraining diverged (non-finite loss); see leaderboard.csv", file=sys.stderr)
        return EXIT_FAILED
    return 0


def report(args: argparse.Namespace) -> int:
    from search.outputs.report import write_report

    storage, study = _open_study(args)
    files = write_report(study, storage, out_folder(args))
    show(args, {"html": str(files.html), "csv": str(files.csv), "figures": files.figures}, f"{files.html}\n{files.csv}")
    return 0


def predict(args: argparse.Namespace) -> int:
    from search.outputs.model import image_files, load_model

    model = load_model(args.model_dir, args.device)
    files, errors = image_files(args.images)
    predictions, unreadable = model.predict_files(files, top_k=args.top_k, max_pixels=args.max_pixels)
    errors += unreadable
    if args.json:
        print_json({"predictions": [p.as_dict() for p in predictions], "errors": errors})
    else:
        print("\n".join(p.line() for p in predictions))
    for error in errors:
        print(f"resnet-search: error: {one_line(error)}", file=sys.stderr)
    return EXIT_USER_ERROR if errors else 0


def evaluate(args: argparse.Namespace) -> int:
    from search.outputs.evaluate import evaluate_model

    evaluation, written = evaluate_model(
        args.model_dir,
        data_dir=args.data_dir,
        split=args.split,
        device=args.device,
        download=not args.no_download,
        out_dir=out_folder(args),
        log=to_stderr,
    )
    if args.json:  # the file's content: its numbers are the ones written (NaN as null)
        print_json({**json.loads(written.read_text(encoding="utf-8")), "file": str(written)})
    else:
        print(f"{evaluation.table()}\n{written}")
    return 0


def export_model(args: argparse.Namespace) -> int:
    from search.config import UserError
    from search.outputs.export_model import export_model

    if args.quantize and args.format != "onnx":
        raise UserError(f"--quantize {args.quantize}: needs --format onnx")
    check = export_model(args.model_dir, format=args.format, out_dir=out_folder(args))
    if not args.quantize:
        show(args, check.as_dict(), check.line())
        return 0
    from search.outputs.quantize import quantize_model

    quantized = quantize_model(
        args.model_dir,
        check.path,
        quantize=args.quantize,
        calibration=args.calibration,
        data_dir=args.data_dir,
        download=not args.no_download,
        log=to_stderr,
    )
    show(
        args,
        {**check.as_dict(), "quantized": quantized.record(check.path.parent)},
        "\n".join([check.line(), *quantized.lines()]),
    )
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "count": count,
    "train": train,
    "run": run,
    "spaces": spaces,
    "studies": studies,
    "dashboard": dashboard,
    "export": export,
    "retrain": retrain,
    "report": report,
    "predict": predict,
    "evaluate": evaluate,
    "export-model": export_model,
}
