"""The ``README.md`` model card of a model folder: what the model is, how well it did, and how
to use it from Python and from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from search.config import TrialConfig
from search.config.describe import architecture_line, freeze_line, recipe_line

if TYPE_CHECKING:
    from search.train.model_info import Deployment, ModelInfo


def model_card(folder: Path, info: ModelInfo, trial: TrialConfig) -> str:
    """The card's Markdown for the folder whose ``model.json`` is ``info``.

    Args:
        folder: The model folder (named in the usage examples).
        info: Its ``model.json`` content.
        trial: The config it trained with.
    """
    where = f"study {info.study}, trial {info.trial}, seed {info.seed}" if info.study else f"seed {info.seed}"
    size, channels = info.input.size, info.input.channels
    norm = info.normalization
    lines = [
        f"# resnet-search model ({where})",
        "",
        f"- Architecture: {architecture_line(trial, info.params, info.flops)}",
        f"- Recipe: {recipe_line(trial)}; trained on {info.trained_on} ({info.epochs} epochs run)",
        f"- Accuracy: {_accuracy(info)}",
        f"- Classes ({len(info.classes)}, in output order): {', '.join(info.classes)}",
        f"- Input: {channels} x {size} x {size} {info.input.pixels}, {norm.formula}, "
        f"mean {_numbers(norm.mean)}, std {_numbers(norm.std)}",
    ]
    frozen = freeze_line(trial.model)
    if frozen:
        lines.append(f"- Fine-tuning: {frozen}")
    if info.data is not None:
        lines.append(f"- Data: {info.data.location} (sha256 {info.data.sha256[:12]}...)")
    lines += _deployment(info.deployment)
    lines += [
        "",
        "## Use it",
        "",
        "```python",
        "import search",
        "",
        f'model = search.load_model("{folder}")',
        'for p in model.predict(["image.jpg"]):',
        "    print(p.label, p.probability)",
        "```",
        "",
        "```",
        f"resnet-search predict {folder} image.jpg --top-k 3",
        f"resnet-search evaluate {folder}",
        f"resnet-search export-model {folder} --format onnx",
        f"resnet-search train {folder / 'config.yaml'}    # train it again",
        "```",
        "",
        "Files: `model.safetensors` (weights), `config.yaml` (the fixed spec), `model.json` (classes, "
        "input, normalisation, provenance), `metrics.json`, `history.csv`, `curves.html`. `export-model` adds "
        "`model.pt` (TorchScript) or `model.onnx` (one self-contained file).",
    ]
    return "\n".join(lines) + "\n"


def _accuracy(info: ModelInfo) -> str:
    parts = []
    if info.val_acc is not None:
        held_out = "" if info.trained_on == "train" else " (not held out: trained on it)"
        parts.append(f"val {info.val_acc:.2%}{held_out}")
    if info.test_acc is not None:
        parts.append(f"test {info.test_acc:.2%}")
    return ", ".join(parts) or "not evaluated"


def _deployment(deployment: Deployment | None) -> list[str]:
    """One line per export ``export-model --quantize`` evaluated and timed: its test accuracy,
    its latency, and the machine and settings the latency belongs to."""
    if deployment is None:
        return []
    lines = []
    for precision, export in (("int8", deployment.int8), ("fp32", deployment.fp32)):
        latency, settings = export.latency, export.latency.settings
        load = "unknown" if latency.load is None else f"{latency.load:g}"
        lines.append(
            f"- {precision} export `{export.file}`: test {export.test_acc:.2%}, "
            f"{latency.median_ms:.3f} ms per batch of {settings.batch_size} "
            f"(median; p10-p90 {latency.p10_ms:.3f}-{latency.p90_ms:.3f} ms; {settings.runtime} "
            f"{latency.machine.get('runtime_version')}, {settings.threads} thread(s), {latency.machine.get('cpu')}, "
            f"load {load}; measured {latency.measured_at})"
        )
    return lines


def _numbers(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
