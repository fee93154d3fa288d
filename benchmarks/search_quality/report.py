"""The outputs: the Markdown tables, ``summary.csv``, ``curves.csv``, ``results.json`` and the
anytime figures (``anytime_<budget>.html``, self-contained, and ``anytime_<budget>.png``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .analysis import PEER_KEYS, Cell, paired, pooled, verdict
from .records import UNIT, SearchRun
from .settings import CANDIDATES, OLD_DEFAULT, OURS, Settings

GOAL = (
    f"Goal (round 3): at both budgets (60 and 180 full-epoch equivalents per seed) the candidate default ({OURS}) "
    "ranks first in mean best validation accuracy among all strategies, ahead of the best peer beyond "
    f"the noise (the paired 95% interval of ({OURS}) minus that peer above zero); it reaches (a)'s final best "
    "within 1/3 of (a)'s compute at 60 and 1/5 at 180; and its retrained winner tests better than the "
    "best peer's by more than the measured noise. Compute is counted in full-epoch equivalents: "
    "images x FLOPs per image at the side trained, over one epoch at full size."
)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def summary_rows(all_cells: Sequence[Cell]) -> list[dict]:
    """One row per strategy, budget and group: what the tables, the CSV and the JSON show."""
    rows = []
    for c in all_cells:
        mean, low, high = c.best
        rt = c.retrained
        counts = c.counts
        rows.append(
            {
                "group": c.group,
                "budget": c.budget,
                "strategy": c.strategy.key,
                "label": c.strategy.label,
                "seeds": [r.seed for r in c.runs],
                "best_val": c.finals,
                "best_val_mean": mean,
                "best_val_ci_low": low,
                "best_val_ci_high": high,
                "target": c.target,
                "compute_to_target": c.epochs_to_target,
                "seed_compute_to_target": c.seed_epochs,
                **{f"trials_{k}": n for k, n in counts.items()},
                "winner_seed": rt.winner.search_seed if rt else None,
                "winner_val": rt.winner.val_acc if rt else None,
                "winner_params": rt.model_params if rt else None,
                "test_acc": list(rt.test_acc) if rt else None,
                "test_acc_mean": rt.test_mean if rt else None,
                "test_acc_std": rt.test_std if rt else None,
            }
        )
    return rows


def table(rows: Sequence[dict], expected_seeds: int) -> str:
    """One group and budget's rows as a Markdown table; rows with missing seeds are marked, and
    strategies with no run recorded left out (said plainly where none has one)."""
    rows = [row for row in rows if row["seeds"]]
    if not rows:
        return "No run of these seeds at this budget is recorded yet."
    lines = [
        f"| strategy | seeds | best val: mean [95% CI] | {UNIT} to (a)'s final best (mean curve) | per seed "
        "| trials: complete / pruned / rejected / cut / repeats | retrained winner test (mean ± std, 3 seeds) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        seeds = len(row["seeds"])
        mark = "" if seeds == expected_seeds else f" (unfinished: {seeds} of {expected_seeds} seeds)"
        ci = f"{pct(row['best_val_mean'])} [{pct(row['best_val_ci_low'])}, {pct(row['best_val_ci_high'])}]"
        reach = "never" if row["compute_to_target"] is None else str(row["compute_to_target"])
        per_seed = " / ".join("never" if e is None else str(e) for e in row["seed_compute_to_target"]) or "-"
        if row["target"] is None:  # no run of (a) to set the target yet
            reach = per_seed = "-"
        test = "-" if row["test_acc_mean"] is None else f"{pct(row['test_acc_mean'])} ± {pct(row['test_acc_std'])}"
        trials = " / ".join(str(row[f"trials_{k}"]) for k in ("complete", "pruned", "rejected", "cut", "repeat"))
        lines.append(
            f"| ({row['strategy']}) {row['label']}{mark} | {seeds} | {ci} | {reach} | {per_seed} | {trials} | {test} |"
        )
    return "\n".join(lines)


def paired_table(group_cells: Sequence[Cell], reference: str, others: Sequence[str] | None = None) -> str:
    """``reference`` against every other strategy (or ``others`` against ``reference``: each of
    them minus it), seed by seed, at each budget."""
    lines = [
        "| budget | difference | seeds | mean difference [95% CI] | better / worse (seeds) | Wilcoxon p |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for budget in sorted({c.budget for c in group_cells}):
        at = {c.strategy.key: c for c in group_cells if c.budget == budget}
        if reference not in at:
            continue
        if others is None:
            pairs = [(reference, key) for key in at if key != reference]
        else:
            pairs = [(key, reference) for key in others if key in at and key != reference]
        for mine, theirs in pairs:
            p = paired(at[mine], at[theirs])
            if not p.diffs:
                continue
            p_text = "-" if p.p_value is None else f"{p.p_value:.3f}"
            peer = " (peer)" if theirs in PEER_KEYS else ""
            interval = "" if p.low is None or p.high is None else f" [{p.low:+.2%}, {p.high:+.2%}]"
            mean = "-" if p.mean is None else f"{p.mean:+.2%}"
            lines.append(
                f"| {budget} | ({mine}) minus ({theirs}){peer} | {len(p.diffs)} | {mean}{interval} "
                f"| {p.wins} / {p.losses} | {p_text} |"
            )
    return "\n".join(lines)


def report_text(settings: Settings, all_cells: Sequence[Cell], test_noise: float | None) -> str:
    """Every group's tables, its paired comparisons and its verdict, as Markdown."""
    rows = summary_rows(all_cells)
    parts = [GOAL + "\n"]
    for group, seeds in settings.seed_groups.items():
        group_cells = [c for c in all_cells if c.group == group]
        parts.append(f"### Search seeds {', '.join(map(str, seeds))} ({group})\n")
        for budget in settings.budgets:
            own = [r for r in rows if r["group"] == group and r["budget"] == budget]
            target = own[0]["target"] if own else None
            parts.append(f"{budget} {UNIT} per seed; (a)'s final best, mean over seeds: {pct(target)}\n")
            parts.append(table(own, len(seeds)) + "\n")
        parts.append(f"Paired comparison, seed by seed, best validation accuracy: ({OURS}) against every other one\n")
        parts.append(paired_table(group_cells, OURS) + "\n")
        parts.append(f"Each candidate default against round 2's default ({OLD_DEFAULT}):\n")
        parts.append(paired_table(group_cells, OLD_DEFAULT, CANDIDATES) + "\n")
        parts.append("Goal: " + " | ".join(verdict(group_cells, test_noise)) + "\n")
    if len(settings.seed_groups) > 1:
        every = pooled(all_cells)
        parts.append(f"### All search seeds ({', '.join(map(str, settings.seeds))}), paired seed by seed\n")
        parts.append(f"({OURS}) against every other strategy:\n\n{paired_table(every, OURS)}\n")
        parts.append(f"Round 2's default ({OLD_DEFAULT}) against every other strategy:\n")
        parts.append(paired_table(every, OLD_DEFAULT) + "\n")
    return "\n".join(parts)


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    if not rows:
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows)


def write_outputs(settings: Settings, all_cells: Sequence[Cell], runs: Sequence[SearchRun], noise: Any) -> str:
    """report.md, summary.csv and the PNG figures into ``settings.records`` (kept in git);
    curves.csv, results.json and the HTML figures (plotly inlined: megabytes) into ``settings.out``.

    Returns:
        The text of report.md.
    """
    test_noise = noise.get("test_noise_threshold") if isinstance(noise, dict) else None
    rows = summary_rows(all_cells)
    settings.records.mkdir(parents=True, exist_ok=True)
    write_csv(settings.records / "summary.csv", rows)
    curves = [
        {
            "group": c.group,
            "budget": c.budget,
            "strategy": c.strategy.key,
            "full_epochs": e,
            "mean": m,
            "low": lo,
            "high": hi,
        }
        for c in all_cells
        for e, (m, lo, hi) in enumerate(zip(c.curve, c.low, c.high))
    ]
    write_csv(settings.out / "curves.csv", curves)
    text = report_text(settings, all_cells, test_noise)
    (settings.records / "report.md").write_text(text, encoding="utf-8")
    for budget in settings.budgets:
        budget_cells = [c for c in all_cells if c.budget == budget]
        (settings.out / f"anytime_{budget}.html").write_text(figure_html(budget_cells, budget), encoding="utf-8")
        figure_png(budget_cells, budget, settings.records / f"anytime_{budget}.png")
    document = {
        "spec": settings.spec_path.name,
        "budgets": list(settings.budgets),
        "seed_groups": {k: list(v) for k, v in settings.seed_groups.items()},
        "retrain_seeds": list(settings.retrain_seeds),
        "data": settings.data,
        "train": settings.train,
        "noise": noise,
        "verdict": {g: verdict([c for c in all_cells if c.group == g], test_noise) for g in settings.seed_groups},
        "strategies": rows,
        "runs": [run.compact() for run in runs],
    }
    (settings.out / "results.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return text


def _colour(index: int, total: int, alpha: float | None = None) -> str:
    hue = index * 360 // max(total, 1)
    return f"hsla({hue}, 65%, 45%, {alpha})" if alpha is not None else f"hsl({hue}, 65%, 45%)"


def figure_html(budget_cells: Sequence[Cell], budget: int) -> str:
    """Best validation accuracy vs epochs spent: mean over seeds and its 95% band, every strategy, each group."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for index, c in enumerate(budget_cells):
        epochs = [e for e, v in enumerate(c.curve) if v is not None]
        name = f"({c.strategy.key}) {c.strategy.label}, seeds {c.group}"
        dash = "solid" if index < len(budget_cells) / 2 or len({x.group for x in budget_cells}) == 1 else "dot"
        fig.add_trace(
            go.Scatter(
                x=epochs + epochs[::-1],
                y=[c.high[e] for e in epochs] + [c.low[e] for e in epochs][::-1],
                fill="toself",
                fillcolor=_colour(index, len(budget_cells), 0.12),
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[c.curve[e] for e in epochs],
                mode="lines",
                name=name,
                line={"color": _colour(index, len(budget_cells)), "dash": dash},
                legendgroup=name,
                line_shape="hv",
            )
        )
    fig.update_layout(
        title=f"Best validation accuracy vs compute, {budget} {UNIT} per seed (mean; band: 95% CI over seeds)",
        xaxis_title=f"compute spent ({UNIT})",
        yaxis_title="best validation accuracy",
        yaxis_tickformat=".0%",
        template="plotly_white",
    )
    return fig.to_html(include_plotlyjs=True, full_html=True)


def figure_png(budget_cells: Sequence[Cell], budget: int, path: Path) -> None:
    """The same figure as a PNG (matplotlib), one panel per group of seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [c for c in budget_cells if c.runs]  # a long run's partial results: only what finished
    groups = list(dict.fromkeys(c.group for c in ran)) or ["none finished"]
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 5), squeeze=False)
    keys = list(dict.fromkeys(c.strategy.key for c in budget_cells))
    for ax, group in zip(axes[0], groups):
        own = [c for c in ran if c.group == group]
        for c in own:
            epochs = [e for e, v in enumerate(c.curve) if v is not None]
            colour = plt.get_cmap("tab10")(keys.index(c.strategy.key) % 10)
            label = f"({c.strategy.key}) {c.strategy.label}, {len(c.runs)} seeds"
            ax.step(epochs, [c.curve[e] for e in epochs], where="post", color=colour, label=label)
            ax.fill_between(
                epochs, [c.low[e] for e in epochs], [c.high[e] for e in epochs], step="post", color=colour, alpha=0.12
            )
        ax.set_title(f"seeds: {group}, {budget} {UNIT} per seed")
        ax.set_xlabel(f"compute spent ({UNIT})")
        ax.set_ylabel("best validation accuracy (mean, 95% CI)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
