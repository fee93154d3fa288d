"""What a run shows while it runs: the plain lines of a log (one per finished trial, progress
rate-limited), the time left from measured epoch times, and the live table of a terminal,
all fed the events the driver sends (here with a clock the test moves)."""

from __future__ import annotations

import io

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from rich.console import Console

from search.engine.events import EpochReport, RunStart, TrialEnd, TrialStart
from search.engine.progress import PlainProgress, RunProgress
from search.outputs.live import LiveTable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stored(number: int, state: TrialState, value: float | None, epochs: int, **attrs: object) -> FrozenTrial:
    trial = create_trial(
        state=state,
        value=value,
        params={"lr": 0.1},
        distributions={"lr": FloatDistribution(0.01, 1.0)},
        user_attrs={"params": 12_345, "epochs_run": epochs, **attrs},
        intermediate_values={e: 0.5 for e in range(1, epochs + 1)},
    )
    trial.number = number
    return trial


def start(clock: Clock, n_trials: int = 10, slots: int = 2, epochs: int = 4, **extra: object) -> RunStart:
    return RunStart(
        study_name="s",
        n_trials=n_trials,
        finished_before=0,
        slots=slots,
        epochs=epochs,
        started=clock.now,
        **extra,  # type: ignore[arg-type]
    )


def train(view: RunProgress, clock: Clock, number: int, epochs: int, epoch_s: float, end: bool = True) -> None:
    """Trial ``number`` trains ``epochs`` epochs of ``epoch_s`` seconds each, then completes."""
    view.trial_started(TrialStart(number, {"lr": 0.1}, 12_345, 10**6, 4))
    for epoch in range(1, epochs + 1):
        clock.now += epoch_s
        view.epoch_reported(EpochReport(number, epoch, {"val_acc": 0.5, "images_per_s": 900.0}, clock.now))
    if end:
        view.trial_ended(TrialEnd(number, "complete", stored(number, TrialState.COMPLETE, 0.5, epochs), at=clock.now))


def test_plain_lines_one_per_finished_trial_and_progress_at_most_every_30_s() -> None:
    clock, lines = Clock(), []
    view = PlainProgress(lines.append, every_s=30, clock=clock)
    view.run_started(start(clock, lines=("devices: CPU only",)))
    assert lines == ["devices: CPU only"]
    for number in range(3):
        train(view, clock, number, epochs=4, epoch_s=9.0)  # 36 s per trial: its last epoch falls past 30 s
    rejected = stored(3, TrialState.PRUNED, None, 0, rejected="over the budget")
    view.trial_ended(TrialEnd(3, "rejected", rejected, at=clock.now))
    finished = [line for line in lines if line.startswith("trial ")]
    progress = [line for line in lines if line.startswith("[")]
    assert [line.split(":")[0] for line in finished] == ["trial 0 complete", "trial 1 complete", "trial 2 complete"]
    assert all("| [" in line and "done" in line for line in finished)  # each carries the totals
    assert not any("trial 3" in line for line in lines)  # a rejected sample: counted, not a line
    elapsed = clock.now - 1000.0
    assert 1 <= len(progress) <= elapsed / 30
    assert "now: #" in progress[0]


def test_no_progress_line_comes_within_30_s_of_another() -> None:
    clock, lines, times = Clock(), [], []
    view = PlainProgress(lambda line: (lines.append(line), times.append(clock.now)), every_s=30, clock=clock)
    view.run_started(start(clock, n_trials=3))
    train(view, clock, 0, epochs=40, epoch_s=1.5, end=False)  # 60 s of epoch reports, one trial
    assert len(times) == 2 and all(b - a >= 30 for a, b in zip(times, times[1:]))


def test_time_left_follows_the_measured_epochs_and_the_slots() -> None:
    clock = Clock()
    view = RunProgress(clock=clock)
    view.run_started(start(clock, n_trials=6, slots=2, epochs=4, epoch_s=100.0))
    assert view.time_left() == pytest.approx(3 * 4 * 100.0)  # before any measure: the probe's estimate
    train(view, clock, 0, epochs=4, epoch_s=10.0)
    # 5 trials of 4 epochs at 10 s, on 2 slots
    assert view.time_left() == pytest.approx(5 * 4 * 10.0 / 2)
    view.trial_started(TrialStart(1, {}, 1, 10**6, 4))
    clock.now += 10.0
    view.epoch_reported(EpochReport(1, 1, {}, clock.now))
    # trial 1 has 3 epochs to go, 4 trials not started: (3 + 16) epochs of 10 s on 2 slots
    assert view.time_left() == pytest.approx((3 + 16) * 10.0 / 2)


def test_time_left_scales_each_epoch_by_its_models_flops() -> None:
    clock = Clock()
    view = RunProgress(clock=clock)
    view.run_started(start(clock, n_trials=3, slots=1, epochs=4, epoch_s=5.0, probe_flops=10**6, mean_flops=2e6))
    assert view.time_left() == pytest.approx(3 * 4 * 10.0)  # the probe's 5 s per 1 MFLOP, at the mean 2 MFLOPs
    view.trial_started(TrialStart(0, {}, 1, 4 * 10**6, 4))  # a large one: 4 MFLOPs
    for epoch, seconds in ((1, 30.0), (2, 30.0)):
        clock.now += seconds
        view.epoch_reported(EpochReport(0, epoch, {}, clock.now))
    # measured: 30 s per epoch at 4 MFLOPs; trial 0 has 2 epochs to go, the 2 to come 4 epochs at 2 MFLOPs
    assert view.time_left() == pytest.approx(2 * 30.0 + 2 * 4 * 15.0)


def test_time_left_counts_the_start_up_of_reused_workers_only() -> None:
    clock = Clock()
    view = RunProgress(clock=clock)
    view.run_started(start(clock, n_trials=4, slots=1, epochs=4))

    def trial(number: int, first_report: float) -> None:
        view.trial_started(TrialStart(number, {}, 1, 10**6, 4))
        for epoch, seconds in ((1, first_report), (2, 10.0), (3, 10.0), (4, 10.0)):
            clock.now += seconds
            view.epoch_reported(EpochReport(number, epoch, {}, clock.now))
        view.trial_ended(TrialEnd(number, "complete", stored(number, TrialState.COMPLETE, 0.5, 4), at=clock.now))

    trial(0, first_report=40.0)  # 30 s to start the slot's Ray worker, then a 10 s epoch
    assert view.epoch_time() == pytest.approx(10.0)
    assert view.time_left() == pytest.approx(3 * 4 * 10.0)  # later trials reuse the worker
    trial(1, first_report=15.0)  # a reused worker: 5 s of start-up
    assert view.time_left() == pytest.approx(2 * (5.0 + 4 * 10.0))
    view.trial_started(TrialStart(2, {}, 1, 10**6, 4))
    clock.now += 20.0  # still before its first report: 25 s to go for it, 45 s for the last
    assert view.time_left() == pytest.approx(25.0 + 45.0)


def test_time_left_counts_pruned_trials_short_and_stops_at_the_deadline() -> None:
    clock = Clock()
    view = RunProgress(clock=clock)
    view.run_started(start(clock, n_trials=5, slots=1, epochs=4, timeout_s=60.0))
    view.trial_started(TrialStart(0, {}, 1, 1, 4))
    for epoch in (1, 2):
        clock.now += 5.0
        view.epoch_reported(EpochReport(0, epoch, {}, clock.now))
    view.trial_ended(TrialEnd(0, "pruned", stored(0, TrialState.PRUNED, None, 2), at=clock.now))
    assert view.time_left() == pytest.approx(4 * 2 * 5.0)  # 4 trials expected to run 2 epochs, as the one so far
    view.trial_started(TrialStart(1, {}, 1, 1, 4))
    clock.now += 55.0  # 65 s in: past the 60 s budget, a trial still running
    assert view.time_left() == pytest.approx(5.0)  # its current epoch, then the run ends


def test_live_table_shows_each_running_trial_and_the_totals() -> None:
    clock = Clock()
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    view = LiveTable(console=console, clock=clock)
    view.run_started(start(clock, n_trials=8))
    train(view, clock, 0, epochs=4, epoch_s=3.0)
    view.trial_started(TrialStart(1, {}, 74_000, 10**7, 4))
    clock.now += 3.0
    view.epoch_reported(EpochReport(1, 2, {"val_acc": 0.4123, "images_per_s": 1234.0}, clock.now))
    console.print(view.render())
    screen = console.file.getvalue()  # type: ignore[attr-defined]
    assert "trial 0 complete: val_acc 0.5000 (4 epochs, 12,345 params)" in screen  # scrolled above the table
    row = next(line for line in screen.splitlines() if line.strip().startswith("1 "))
    assert row.split() == ["1", "74,000", "2/4", "0.4123", "1,234", "0m03s"]
    assert "1/8 finished" in screen and "left ~" in screen
    assert "done 1 · running 1 · pruned 0 · failed 0 · rejected 0" in screen
    assert "best 0.5000 (trial 0, 12,345 params)" in screen


def test_time_left_before_any_report_is_the_pre_run_estimate() -> None:
    """The live view's time left and the pre-run estimate are one model: workers started once
    per slot, reused after, every trial its epochs (:meth:`TrialCost.run_s`)."""
    from search.engine.cost import TrialCost
    from search.engine.startup import StartUp

    cost = TrialCost(
        params=1,
        batch_size=10,
        flops=10**6,
        mean_flops=10**6,
        device="cpu",
        threads=1,
        step_s=0.5,
        n_train=100,
        epochs=4,
        startup=StartUp(cold_s=30.0, warm_s=2.0, source="test"),
    )
    clock = Clock()
    view = RunProgress(clock=clock)
    view.run_started(
        start(clock, n_trials=6, slots=2, epochs=4, epoch_s=cost.epoch_s, cold_s=30.0, warm_s=2.0, probe_flops=10**6)
    )
    assert view.time_left() == pytest.approx(cost.run_s(6, 2))  # 30 + 2 * 2 + 3 * 4 * 5
    view.trial_started(TrialStart(0, {}, 1, 10**6, 4))
    clock.now += 10.0  # one slot's new worker 10 s into its start-up; the other slot not started
    assert view.time_left() == pytest.approx(cost.run_s(6, 2) - 10.0 / 2)


def test_the_best_so_far_is_the_studys_and_nothing_is_drawn_before_the_plan() -> None:
    clock = Clock()
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    view = LiveTable(console=console, clock=clock)
    console.print(view.render())
    assert console.file.getvalue().strip() == ""  # type: ignore[attr-defined]
    earlier = stored(3, TrialState.COMPLETE, 0.61, 4)
    interrupted = stored(4, TrialState.FAIL, None, 1, interrupted="stopped by the run's time budget")
    view.run_started(start(clock, n_trials=8, finished=(earlier,)))
    assert view.best_text() == "best 0.6100 (trial 3, 12,345 params)"
    view.trial_ended(TrialEnd(4, "interrupted", interrupted, at=clock.now))
    console.print(view.render())
    screen = console.file.getvalue()  # type: ignore[attr-defined]
    assert "interrupted 1" in screen and "failed 0" in screen
    assert "trial 4 interrupted: stopped by the run's time budget" in screen
