"""The ``README.md`` model card of a model folder: what the model is, how well it did, and how
to use it from Python and from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from search.config import TrialConfig
from search.config.describe import architecture_line, recipe_line


def model_card(folder: Path, info: dict[str, Any], trial: TrialConfig) -> str:
    """The card's Markdown for the folder whose ``model.json`` is ``info``.

    Args:
        folder: The model folder (named in the usage examples).
        info: Its ``model.json`` content.
        trial: The config it trained with.
    """
    where = (
        f"study {info['study']}, trial {info['trial']}, seed {info['seed']}"
        if info.get("study")
        else f"seed {info['seed']}"
    )
    data = info.get("data") or {}
    size, channels = info["input"]["size"], info["input"]["channels"]
    lines = [
        f"# resnet-search model ({where})",
        "",
        f"- Architecture: {architecture_line(trial, info['params'], info['flops'])}",
        f"- Recipe: {recipe_line(trial)}; trained on {info['trained_on']} ({info['epochs']} epochs run)",
        f"- Accuracy: {_accuracy(info)}",
        f"- Classes ({len(info['classes'])}, in output order): {', '.join(info['classes'])}",
        f"- Input: {channels} x {size} x {size} {info['input']['pixels']}, {info['normalization']['formula']}, "
        f"mean {_numbers(info['normalization']['mean'])}, std {_numbers(info['normalization']['std'])}",
    ]
    if data:
        lines.append(f"- Data: {data['location']} (sha256 {data['sha256'][:12]}...)")
    lines += _deployment(info.get("deployment"))
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
        "input, normalisation, provenance), `metrics.json`, `history.csv`, `curves.html`.",
    ]
    return "\n".join(lines) + "\n"


def _accuracy(info: dict[str, Any]) -> str:
    parts = []
    if info.get("val_acc") is not None:
        held_out = "" if info["trained_on"] == "train" else " (not held out: trained on it)"
        parts.append(f"val {info['val_acc']:.2%}{held_out}")
    if info.get("test_acc") is not None:
        parts.append(f"test {info['test_acc']:.2%}")
    return ", ".join(parts) or "not evaluated"


def _deployment(exports: Any) -> list[str]:
    """One line per export ``export-model --quantize`` evaluated and timed: its test accuracy,
    its latency, and the machine and settings the latency belongs to."""
    if not isinstance(exports, dict):
        return []
    lines = []
    for precision, export in exports.items():
        try:
            latency, settings, machine = export["latency"], export["latency"]["settings"], export["latency"]["machine"]
            lines.append(
                f"- {precision} export `{export['file']}`: test {export['test_acc']:.2%}, "
                f"{latency['median_ms']:.3f} ms per batch of {settings['batch_size']} "
                f"(median; p10-p90 {latency['p10_ms']:.3f}-{latency['p90_ms']:.3f} ms; {settings['runtime']} "
                f"{machine['runtime_version']}, {settings['threads']} thread(s), {machine['cpu']}, "
                f"load {latency['load']}; measured {latency['measured_at']})"
            )
        except (KeyError, TypeError, ValueError):
            continue  # a hand-edited entry: the card leaves it out rather than fail
    return lines


def _numbers(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
