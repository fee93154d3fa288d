"""The spec format: parsing, sampling, warm starts, and one-line errors through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch

from search.config import (
    SGD,
    AdamW,
    RandomSuggester,
    ResNetConfig,
    SpecError,
    Stage,
    TrialConfig,
    load_spec,
    parse_spec,
    random_samples,
)
from search.models import build_model

SPACES = Path(__file__).resolve().parents[1] / "spaces"

CONDITIONAL = """
model:
  stages: [{blocks: {range: [1, 3]}, width: {choice: [16, 32]}}, {blocks: 1, width: 64}]
  se: {choice: [{name: none}, {name: blocks, ratio: {choice: [4, 8]}}]}
train:
  optimizer:
    choice:
      - {name: sgd, lr: {range: [0.01, 0.3], log: true}, nesterov: {choice: [false, true]}}
      - {name: adamw, lr: {range: [0.0001, 0.01], log: true}}
"""


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_loads(path: Path) -> None:
    spec = load_spec(path)
    assert spec.study.name == path.stem


def test_a_fixed_spec_is_a_plain_config() -> None:
    config = load_spec(SPACES / "paper_se_443.yaml").fixed()
    assert isinstance(config, TrialConfig)
    assert config.model.stages == (Stage(4, 64), Stage(4, 128), Stage(3, 256))
    assert config.train.optimizer == SGD(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0005)
    assert config.train.grad_clip == 0.1 and config.train.grad_clip_mode == "value"


def test_a_space_is_not_a_fixed_config_and_names_its_open_keys() -> None:
    with pytest.raises(SpecError, match=r"model\.stages\[0\]\.blocks.*open keys"):
        parse_spec(CONDITIONAL, "space.yaml").fixed()


def test_sampling_names_parameters_readably_and_only_for_the_chosen_branch() -> None:
    spec = parse_spec(CONDITIONAL)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        config = spec.space.sample(trial)
        study.tell(trial, 0.0)
        names = set(trial.params)
        assert {"model.stages.0.blocks", "model.stages.0.width", "model.se.name", "train.optimizer.name"} <= names
        branch = config.train.optimizer.name
        assert f"train.optimizer.{branch}.lr" in names
        other = {"sgd": "adamw", "adamw": "sgd"}[branch]
        assert not any(name.startswith(f"train.optimizer.{other}.") for name in names)
        assert ("model.se.blocks.ratio" in names) == (config.model.se.name == "blocks")
        seen.add(branch)
    assert seen == {"sgd", "adamw"}


def test_sampled_values_respect_ranges_and_types() -> None:
    spec = parse_spec(CONDITIONAL)
    for config in random_samples(spec.space, 200, seed=3):
        assert isinstance(config.model, ResNetConfig)
        assert 1 <= config.model.stages[0].blocks <= 3
        assert config.model.stages[0].width in (16, 32)
        if isinstance(config.train.optimizer, AdamW):
            assert 1e-4 <= config.train.optimizer.lr <= 1e-2


def test_random_suggester_is_repeatable() -> None:
    spec = parse_spec(CONDITIONAL)
    first = list(random_samples(spec.space, 20, seed=7))
    assert first == list(random_samples(spec.space, 20, seed=7))
    assert first != list(random_samples(spec.space, 20, seed=8))
    assert RandomSuggester(0).suggest_int("x", 1, 1) == 1


def test_a_fixed_config_maps_back_to_parameters_of_the_space() -> None:
    space = load_spec(SPACES / "cifar_5m.yaml").space
    paper = load_spec(SPACES / "paper_se_443.yaml").fixed()
    study = optuna.create_study()
    study.enqueue_trial(space.params_of(paper))
    config = space.sample(study.ask())
    # The space pools globally (a model for any side); on the 8x8 map of a 32-px image that is
    # the paper's AvgPool2d(8): the same model, the same outputs.
    assert config.model == replace(paper.model, pool_kernel=None) and paper.model.pool_kernel == 8
    torch.manual_seed(0)
    ours = build_model(config.model, 32).eval()
    torch.manual_seed(0)
    theirs = build_model(paper.model, 32).eval()
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(ours(images), theirs(images), atol=1e-5)  # summed in another order
    assert config.train.optimizer == paper.train.optimizer
    assert config.train.epochs == 30 != paper.train.epochs  # the space keeps its own epoch budget


def test_a_config_outside_the_space_is_refused() -> None:
    space = parse_spec(CONDITIONAL).space
    outside = TrialConfig(ResNetConfig(stages=(Stage(1, 48), Stage(1, 64))), parse_spec("").fixed().train)
    with pytest.raises(ValueError, match=r"model\.stages\[0\]\.width: 48 is not one of"):
        space.params_of(outside)


# Each bad spec: (YAML text, the key path the error must name, a word of what is allowed).
BAD_SPECS = [
    ("model: {stages: [{blokcs: 2}]}", "model.stages[0].blokcs", "did you mean 'blocks'"),
    ("model: {block: basik}", "model.block", "'basic', 'bottleneck'"),
    ("train: {optimizer: {name: sgdd}}", "train.optimizer.name", "did you mean 'sgd'"),
    ("train: {epochs: ten}", "train.epochs", "integer"),
    ("model: {stages: [{blocks: 2.5}]}", "model.stages[0].blocks", "integer"),
    ("model: {stages: [{width: {range: [64, 16]}}]}", "model.stages[0].width.range", "low 64 > high 16"),
    ("train: {optimizer: {name: sgd, lr: {range: [0, 1], log: true}}}", "train.optimizer.lr.range", "> 0"),
    ("budget: {max_params: 0}", "budget.max_params", "> 0"),
    ("budget: {max_params: -5}", "budget.max_params", "> 0"),
    ("study: {n_trials: {range: [1, 9]}}", "study.n_trials", "cannot be searched"),
    ("model: {se: {choice: [{name: blocks}, {name: blocks}]}}", "model.se.choice", "distinct"),
    ("model: {aux_head: {after_stage: 7}}", "model.aux_head.after_stage", "before the last"),
    ("train: {optimizer: {name: adam, betas: [0.9]}}", "train.optimizer.betas", "2 values"),
    ("model: {dropout: 1.5}", "model.dropout", "<= 0.99"),
    ("modle: {}", "modle", "did you mean 'model'"),
    ("model: [1, 2", "", "invalid YAML"),
    ("train: {class_weights: inverse}", "train.class_weights", "'none', 'balanced'"),
    ("train: {sampler: {choice: [uniform, weighted]}}", "train.sampler.choice[1]", "'uniform', 'balanced'"),
    ("study: {objectives: [{metric: f1}]}", "study.objectives[0].metric", "'balanced_acc', 'macro_f1'"),
    ("schema_version: 0", "schema_version", "version 1 is the first and current one"),
    ("schema_version: 7", "schema_version", "newer than this resnet-search's 1: upgrade"),
]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(("text", "key", "allowed"), BAD_SPECS, ids=[b[1] or b[2] for b in BAD_SPECS])
def test_bad_spec_is_one_line_with_the_key_and_exit_2(tmp_path: Path, text: str, key: str, allowed: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = _cli("count", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(path) in lines[0]
    assert f": {key}:" in lines[0] if key else True
    assert allowed in lines[0]


def test_a_missing_spec_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = _cli("count", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "nope.yaml: no such file, nor a preset's name (cifar_5m, " in result.stderr
