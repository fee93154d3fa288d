"""The conventions of every ``resnet-search`` command, written once: each flag's meaning, value
and default (:data:`FLAGS`), and what each command takes (:data:`COMMANDS`). The parser is built
from these two tables (:mod:`search.cli.parser`), ``tests/test_cli_conventions.py`` walks it, and
the README's "Commands" table is checked against it.

The rules the tables keep:

- ``--json``: every command that prints a result prints it as one JSON object on stdout instead
  (progress and notes stay on stderr). ``train`` and ``run`` print progress and a summary for
  people; their results are a model folder and a study, which ``evaluate``/``studies``/``export``
  print (also as JSON).
- ``--out``: always a folder; the names of the files written in it are fixed, listed in the
  command's ``--help`` and printed when written.
- ``--top``: how many of the best complete trials, default 1, wherever it appears.
- ``--device``: where models compute, the same choices and default for every command.
- every flag has help text; a flag's help starts with its meaning from :data:`FLAGS`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from search.config.files import DEFAULT_MAX_PIXELS, MAX_PIXELS_VARIABLE

MAX_COUNT = 1_000_000  # the most --samples, --top, --epochs... a flag takes: more would only hang


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 and <= {MAX_COUNT:,}, got {text!r}")
    return value


def count_arg(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def duration(text: str) -> float:
    from search.config import InvalidValue
    from search.config.units import parse_duration

    try:
        return parse_duration(text)
    except InvalidValue as error:
        raise argparse.ArgumentTypeError(error.message) from None


def pixel_limit(text: str) -> int:
    from search.config import InvalidValue
    from search.config.files import parse_pixel_limit

    try:
        return parse_pixel_limit(text)
    except InvalidValue as error:
        raise argparse.ArgumentTypeError(error.message) from None


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 0 to 65535, got {text!r}")
    return value


def seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or any(not 0 <= seed < 2**32 for seed in seeds):  # train.seed's bounds
        raise argparse.ArgumentTypeError(
            f"must be comma-separated whole numbers from 0 to {2**32 - 1} like 0,1,2, got {text!r}"
        )
    return seeds


@dataclass(frozen=True)
class Flag:
    """One flag: what it means (the start of its help on every command), its value when left out,
    and argparse's options for it (type, choices, action, metavar). ``shown`` says the default in
    words where a command's own default differs in form (a folder named after the study)."""

    meaning: str
    default: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    shown: str | None = None

    def help(self, shown: str | None = None) -> str:
        default = shown or self.shown
        return f"{self.meaning} (default {default})" if default else self.meaning


SWITCH = {"action": "store_true"}
DEVICE_MEANING = (
    "where models compute: cpu, or cuda (an error where there is no CUDA GPU); left out: cuda when "
    "there is one (run: the GPUs resources.gpu asks for, where there are any)"
)
FLAGS: dict[str, Flag] = {
    "--json": Flag("print the result as one JSON object on stdout (progress and notes stay on stderr)", False, SWITCH),
    "--out": Flag("output folder; the file names in it are fixed", options={"metavar": "DIR"}),
    "--top": Flag("how many of the best complete trials", 1, {"type": positive_int, "metavar": "K"}, "1"),
    "--device": Flag(DEVICE_MEANING, options={"choices": ("cpu", "cuda")}),
    "--data-dir": Flag(
        "dataset folder or archive (beats data.root and the data a study or model recorded)", options={"metavar": "D"}
    ),
    "--no-download": Flag("never download a known dataset", False, SWITCH),
    "--storage": Flag(
        "Optuna storage URL: sqlite:///PATH.db, postgresql://..., a journal file", options={"metavar": "URL"}
    ),
    "--study": Flag("study name (may be left out when the storage holds one)", options={"metavar": "NAME"}),
    "--epochs": Flag("override train.epochs", options={"type": positive_int, "metavar": "N"}),
    "--seeds": Flag("comma-separated training seeds, e.g. 0,1,2", options={"type": seed_list, "metavar": "0,1,2"}),
    "--samples": Flag("configs sampled to survey a space", 2000, {"type": positive_int, "metavar": "N"}, "2000"),
    "--resume": Flag("continue from the checkpoint in the output folder", False, SWITCH),
    "--init": Flag("start from a model folder's weights", options={"metavar": "MODEL_DIR"}),
    "--address": Flag("join a Ray cluster (ray start --head) instead of a local Ray", options={"metavar": "HOST:PORT"}),
    "--dry-run": Flag("validate, survey the budget and estimate the cost; train nothing", False, SWITCH),
    "--timeout": Flag(
        "time budget: 90s, 30m, 2h, 1d (beats study.timeout)", options={"type": duration, "metavar": "DURATION"}
    ),
    "--n-trials": Flag(
        "N more finished trials in this run (left out: continue to the study's total, study.n_trials)",
        options={"type": positive_int, "metavar": "N"},
    ),
    "--max-pixels": Flag(
        "refuse larger images, read from their header",
        options={"type": pixel_limit, "metavar": "N"},
        shown=f"${MAX_PIXELS_VARIABLE}, else {DEFAULT_MAX_PIXELS:,}",
    ),
    "--tensorboard": Flag("TensorBoard logs, one run per trial", options={"metavar": "DIR"}),
    "--mlflow": Flag(
        "MLflow tracking URI: sqlite:///mlflow.db (recommended), http://host:5000, or file:mlruns (MLflow 3 "
        "reads a file: store back only with MLFLOW_ALLOW_FILE_STORE=true)",
        options={"metavar": "URI"},
    ),
    "--keep": Flag(
        "keep the best K trials' weights as model folders, 0 for none", 3, {"type": count_arg, "metavar": "K"}, "3"
    ),
    "--pareto": Flag("the Pareto front of a multi-objective study (instead of --top)", False, SWITCH),
    "--port": Flag("TCP port (0: any free port)", 8080, {"type": port}, "8080"),
    "--host": Flag("interface to bind", "127.0.0.1", shown="127.0.0.1: this machine only"),
    "--top-k": Flag("classes shown per image", 1, {"type": positive_int, "metavar": "K"}, "1"),
    "--split": Flag("the split of the data to evaluate on", "test", {"choices": ("test", "val", "train")}, "test"),
    "--format": Flag(
        "torchscript (model.pt) or onnx (model.onnx: pip install 'resnet-search[onnx]')",
        options={"choices": ("torchscript", "onnx"), "required": True},
    ),
    "--latency": Flag("measure latency as budget.latency says (its defaults where unset)", False, SWITCH),
    "--quantize": Flag(
        "onnx: also a statically quantized file, evaluated and timed against the fp32 one",
        options={"choices": ("int8",)},
    ),
    "--calibration": Flag(
        "--quantize: training images to calibrate on", 256, {"type": positive_int, "metavar": "N"}, "256"
    ),
}


@dataclass(frozen=True)
class Command:
    """One command: its help line, positional arguments (name, help, nargs), flags, and the
    default of a flag where it is the command's own (``--out``'s folder, ``--storage``...).
    ``files`` names what ``--out`` gets, by fixed names."""

    help: str
    arguments: tuple[tuple[str, str, Any], ...]
    flags: tuple[str, ...]
    shown: Mapping[str, str] = field(default_factory=dict)
    files: str = ""


STUDY = ("--storage", "--study")
DATA = ("--data-dir", "--no-download")
TRACKING = ("--tensorboard", "--mlflow")
SPEC = ("spec", "a spec file, or a preset's name (resnet-search spaces lists them)", None)
MODEL_DIR = ("model_dir", "a model folder (train, retrain and run --keep write them)", None)
MODEL_OR_ONNX = (
    "model_dir",
    "a model folder (train, retrain and run --keep write them), or an .onnx file export-model wrote",
    None,
)
READ_STORAGE = {"--storage": "studies/<study>.db, or the only studies/*.db here"}
COMMANDS: dict[str, Command] = {
    "count": Command(
        "parameters, FLOPs, memory, model size and latency of a config, or of a space's extremes",
        (SPEC,),
        ("--json", "--samples", "--latency"),
    ),
    "train": Command(
        "train one fixed config: a model folder",
        (SPEC,),
        (*DATA, "--epochs", "--seeds", "--out", "--device", "--resume", "--init"),
        {"--out": "runs/<study>", "--seeds": "the spec's train.seed"},
        "model.safetensors, config.yaml, model.json, metrics.json, history.csv, curves.html, README.md "
        "(several seeds: seed<N>/ each)",
    ),
    "run": Command(
        "search a space: Ray Tune trials, Optuna sampling and pruning",
        (SPEC,),
        (*DATA, "--storage", "--address", "--dry-run", "--timeout", "--n-trials", "--device", *TRACKING, "--keep"),
        {"--storage": "sqlite:///studies/<study>.db"},
    ),
    "spaces": Command(
        "the presets shipped with resnet-search (name, what), or one copied to edit",
        (("name", "a preset to copy into --out (left out: list them all)", "?"),),
        ("--json", "--out"),
        {"--out": "the current folder"},
        "<name>.yaml",
    ),
    "studies": Command(
        "the studies in a storage: trials by state, best value, dates",
        (),
        ("--storage", "--json"),
        {"--storage": "every studies/*.db here"},
    ),
    "dashboard": Command(
        "serve optuna-dashboard on a storage (Ctrl-C stops it)", (), (*STUDY, "--port", "--host"), READ_STORAGE
    ),
    "export": Command(
        "write the best trials' configs as fixed spec files",
        (),
        (*STUDY, "--top", "--pareto", "--out", "--json"),
        {**READ_STORAGE, "--out": "studies/<study>/export"},
        "<study>_trial<N>.yaml",
    ),
    "retrain": Command(
        "retrain the best configs on train+val over seeds, test them",
        (),
        (*STUDY, "--top", "--seeds", "--epochs", *DATA, "--out", "--device", "--json"),
        {**READ_STORAGE, "--out": "runs/<study>/retrain", "--seeds": "each config's train.seed"},
        "leaderboard.csv, trial<N>/seed<S>/ (model folders)",
    ),
    "report": Command(
        "a self-contained HTML report of a study, and trials.csv",
        (),
        (*STUDY, "--out", "--json"),
        {**READ_STORAGE, "--out": "studies/<study>"},
        "report.html, plotly.min.js, trials.csv",
    ),
    "predict": Command(
        "classify images with a model folder",
        (MODEL_OR_ONNX, ("images", "image files or folders of images", "+")),
        ("--top-k", "--device", "--max-pixels", "--json"),
    ),
    "evaluate": Command(
        "accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1 and confusion matrix of a model",
        (MODEL_OR_ONNX,),
        (*DATA, "--split", "--out", "--device", "--json"),
        {"--out": "MODEL_DIR (an .onnx file: its folder)"},
        "evaluation_<split>.json (an .onnx file: <name>.evaluation_<split>.json)",
    ),
    "export-model": Command(
        "a model folder as TorchScript or ONNX, checked against the model",
        (MODEL_DIR,),
        ("--format", "--out", "--quantize", "--calibration", *DATA, "--json"),
        {"--out": "MODEL_DIR"},
        "model.pt or model.onnx (one self-contained file); --quantize int8: also model.int8.onnx",
    ),
}


def flag_help(command: str, name: str) -> str:
    """The help of ``name`` on ``command``: its meaning, the command's default, and for ``--out``
    the files it writes there."""
    spec = COMMANDS[command]
    text = FLAGS[name].help(spec.shown.get(name))
    return f"{text}; writes {spec.files}" if name == "--out" and spec.files else text
