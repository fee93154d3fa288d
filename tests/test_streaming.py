"""The training set streamed from the memory-mapped cache (``data.on_device: false``) against
the same set copied to the device whole: the same batches, the same weights; ``auto`` streams
what exceeds the budget. Generated images, CPU, a few seconds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from test_train import TINY, same_weights, trial

from search.config import DataConfig
from search.data import load_dataset
from search.data.placement import Decision, Placement
from search.data.splits import MappedSplit
from search.train import TrainOptions, train
from search.train.feed import TrainFeed

CPU = torch.device("cpu")
FOLDER = DataConfig(dataset="imagefolder", val_fraction=0.25)


@pytest.fixture
def mapped(tiny_imagefolder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RESNET_SEARCH_CACHE", str(tmp_path / "cache"))
    return load_dataset(FOLDER, data_dir=tiny_imagefolder)


def feeds(data) -> tuple[TrainFeed, TrainFeed]:
    return (
        TrainFeed(data.train, CPU, Decision(True, "forced")),
        TrainFeed(data.train, CPU, Decision(False, "forced")),
    )


def test_the_training_split_stays_in_the_mapped_cache(mapped) -> None:
    assert isinstance(mapped.train, MappedSplit)
    assert mapped.train.nbytes == len(mapped.train) * 3 * 32 * 32
    rows = torch.tensor([3, 0, 7])
    assert torch.equal(mapped.train.read(rows), mapped.train.images[rows])


def test_streaming_gives_the_same_batches_in_the_same_order(mapped) -> None:
    whole, streamed = feeds(mapped)
    perm = torch.randperm(len(whole), generator=torch.Generator().manual_seed(1))
    a, b = list(whole.batches(perm, 5)), list(streamed.batches(perm, 5))
    assert len(a) == len(b) == len(perm) // 5
    for (ia, xa, ya), (ib, xb, yb) in zip(a, b, strict=True):
        assert torch.equal(ia, ib) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][1], a[1][1])  # different batches, not one batch repeated


@pytest.mark.parametrize("flip", [True, "alternating"])
def test_streaming_trains_the_same_weights_as_on_device(mapped, flip) -> None:
    tiny = dataclasses.replace(TINY, num_classes=3)
    config = trial(tiny, epochs=1, batch_size=8, augment=dataclasses.replace(trial().train.augment, flip=flip))
    lines: list[str] = []
    on = train(config, dataclasses.replace(mapped, placement=Placement(on_device=True)), TrainOptions(log=lines.append))
    off = train(
        config, dataclasses.replace(mapped, placement=Placement(on_device=False)), TrainOptions(log=lines.append)
    )
    assert same_weights(on.model, off.model)
    assert on.history[0].train_loss == off.history[0].train_loss
    assert lines == [f"training set: streamed ({mapped.train.nbytes / 2**20:,.1f} MB; data.on_device: false)"]


def test_auto_streams_what_exceeds_the_budget(mapped) -> None:
    nbytes = mapped.train.nbytes
    over = Placement("auto", budget_mb=nbytes / 2 / 2**20).decide(nbytes, CPU)
    under = Placement("auto", budget_mb=nbytes * 2 / 2**20).decide(nbytes, CPU)
    assert not over.on_device and "over the budget" in over.why and "device_memory_budget_mb" in over.why
    assert under.on_device and "fits the budget" in under.why
    # Unset: half the measured free memory, split between the trials sharing the device.
    measured = Placement("auto").decide(nbytes, CPU)
    assert measured.on_device and "host RAM available" in measured.why
    packed = Placement("auto").shared_by(4).decide(nbytes, CPU)
    assert "/ 4 trials" in packed.why


def test_the_budget_is_read_from_the_spec(tiny_imagefolder: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RESNET_SEARCH_CACHE", str(tmp_path / "cache"))
    config = dataclasses.replace(FOLDER, device_memory_budget_mb=0.01)
    data = load_dataset(config, data_dir=tiny_imagefolder)
    assert data.placement == Placement("auto", 0.01)
    lines: list[str] = []
    train(trial(dataclasses.replace(TINY, num_classes=3), epochs=1, batch_size=8), data, TrainOptions(log=lines.append))
    assert len(lines) == 1 and lines[0].startswith("training set: streamed") and "over the budget of 0.0 MB" in lines[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_streaming_through_pinned_memory_gives_the_same_batches_on_cuda(mapped) -> None:
    cuda = torch.device("cuda")
    whole = TrainFeed(mapped.train, cuda, Decision(True, "forced"))
    streamed = TrainFeed(mapped.train, cuda, Decision(False, "forced"))
    perm = torch.randperm(len(whole), device=cuda, generator=torch.Generator(cuda).manual_seed(1))
    for (ia, xa, ya), (ib, xb, yb) in zip(whole.batches(perm, 5), streamed.batches(perm, 5), strict=True):
        assert xb.device.type == "cuda" and torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


def test_the_pre_run_block_says_where_the_training_set_goes(mapped) -> None:
    from search.config import parse_spec
    from search.engine.preflight import training_set_placement

    text = (
        "study: {name: s}\ndata: {dataset: imagefolder, device_memory_budget_mb: 0.01}\n"
        "resources: {gpu: 0.25}\nmodel: {name: resnet, num_classes: 3}\n"
    )
    spec = parse_spec(text)
    data = dataclasses.replace(mapped, placement=Placement("auto", spec.data.device_memory_budget_mb))
    line = training_set_placement(spec, data, use_gpu=False).line()
    assert line.startswith("training set: streamed (") and "over the budget of 0.0 MB" in line
    streamed_anyway = dataclasses.replace(mapped, placement=Placement("auto").shared_by(4))
    assert training_set_placement(spec, streamed_anyway, use_gpu=False).on_device  # CPU: 1 trial per device


def test_a_long_build_reports_progress_in_a_log(capsys: pytest.CaptureFixture) -> None:
    from search.data.progress import LOG_MIN, Progress

    with Progress(LOG_MIN * 2, "decoding") as progress:
        for _ in range(20):
            progress.advance(LOG_MIN // 10)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith(f"resnet-search: decoding {LOG_MIN * 2:,}/{LOG_MIN * 2:,}")
    with Progress(LOG_MIN - 1, "decoding") as quiet:
        quiet.advance(LOG_MIN - 1)
    assert capsys.readouterr().err == ""
