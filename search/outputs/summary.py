"""The table a finished (or stopped) run prints: counts, time, the top trials, and the commands
that come next."""

from __future__ import annotations

from search.config.units import format_duration
from search.engine.run import SearchSummary
from search.study.keys import EPOCHS_RUN, FLOPS, PARAMS, STARTUP_S
from search.study.storage import default_storage


def summary_table(summary: SearchSummary) -> str:
    """``summary`` as the lines ``resnet-search run`` prints at its end."""
    s = summary
    if s.nothing_to_run:
        return s.nothing_to_run
    overhead = f", search overhead {s.overhead:.1%} of it" if s.overhead is not None else ": no trial ran"
    startup = [s.startup.line()] if s.startup else []
    repeats = f", {s.repeats} repeats of trained configs answered from the record" if s.repeats else ""
    lines = [
        f"study {s.study_name}: {s.finished} finished trials, {s.rejected} samples rejected for the budget{repeats}",
        f"wall time {format_duration(s.wall_time_s)}{overhead}",
        *startup,
        *([s.ended_by, "a rerun with a larger --timeout (or --n-trials) continues the study"] if s.ended_by else []),
        "",
        f"{'trial':>5}  {'value':>8}  {'params':>11}  {'FLOPs':>15}  {'epochs':>6}  start-up",
    ]
    for trial in s.top:
        attrs = trial.user_attrs
        started = attrs.get(STARTUP_S)
        lines.append(
            f"{trial.number:>5}  {trial.values[0]:>8.4f}  {attrs.get(PARAMS, 0):>11,}  "
            f"{attrs.get(FLOPS, 0):>15,}  {attrs.get(EPOCHS_RUN, '-'):>6}  "
            + ("-" if not isinstance(started, (int, float)) else f"{started:.1f}s")
        )
    storage = f" --storage {s.storage}" if s.storage != default_storage(s.study_name) else ""
    lines += [
        "",
        f"watch:   resnet-search dashboard{storage} --study {s.study_name}",
        f"export:  resnet-search export{storage} --study {s.study_name} --top 3",
        f"retrain: resnet-search retrain{storage} --study {s.study_name} --top 3 --seeds 0,1,2",
        f"report:  resnet-search report{storage} --study {s.study_name}",
    ]
    return "\n".join(lines)
