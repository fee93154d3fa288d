"""Budget: fast_count equals fvcore's reference count on every option; the budget check."""

from __future__ import annotations

import random
import typing

import pytest
import torch

from search.budget import Counts, check_budget, constraint_values, count_model, counts, fast_count, memory
from search.config import (
    AuxHead,
    BudgetConfig,
    Head,
    InvalidValue,
    ResNetConfig,
    SpecError,
    SqueezeExcite,
    Stage,
    Stem,
    TorchvisionResNetConfig,
    blocks,
    parse_spec,
)
from search.config.blocks import BLOCK_TYPES, BlockConv, BlockType
from search.models import VARIANTS, build_model, geometry, resnet
from search.models.geometry import resnet_geometry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_config(rng: random.Random) -> ResNetConfig:
    """A small config drawn over every option (odd kernels, strides, sizes, heads...)."""
    n_stages = rng.randint(1, 4)
    aux = None
    if n_stages > 1 and rng.random() < 0.3:
        aux = AuxHead(rng.randrange(n_stages - 1), tuple(rng.choice([3, 5]) for _ in range(rng.randint(0, 2))))
    return ResNetConfig(
        num_classes=rng.randint(2, 12),
        in_channels=rng.choice([1, 3]),
        stem=Stem(rng.choice([4, 8, 16]), rng.randint(1, 7), rng.randint(1, 3), rng.random() < 0.4),
        stages=tuple(Stage(rng.randint(1, 2), rng.choice([1, 3, 4, 8, 12])) for _ in range(n_stages)),
        block=rng.choice(sorted(BLOCK_TYPES)),
        preact=rng.random() < 0.5,
        shortcut=rng.choice(["projection", "identity"]),
        se=SqueezeExcite(rng.choice(["none", "stem", "blocks"]), rng.choice([1, 2, 4, 16])),
        pool_kernel=rng.choice([None, None, 1, 2, 3]),
        dropout=rng.choice([0.0, 0.2]),
        head=Head(
            tuple(rng.choice([4, 7]) for _ in range(rng.randint(0, 2))), rng.random() < 0.5, rng.choice([0.0, 0.1])
        ),
        aux_head=aux,
        zero_init_residual=rng.random() < 0.3,
    )


def random_cases(n: int, seed: int = 0) -> list[tuple[ResNetConfig, int]]:
    """``n`` (config, image size) pairs whose pool_kernel fits the feature map."""
    rng = random.Random(seed)
    cases: list[tuple[ResNetConfig, int]] = []
    while len(cases) < n:
        config, size = random_config(rng), rng.choice([7, 13, 16, 31, 32, 33])
        try:
            fast_count(config, size)
        except InvalidValue:
            continue
        cases.append((config, size))
    return cases


@pytest.mark.parametrize("seed", range(4))
def test_fast_count_equals_fvcore_on_random_configs(seed: int) -> None:
    for config, size in random_cases(25, seed):  # 4 x 25 configs, a few seconds each
        expected = count_model(build_model(config, size), size, config.in_channels)
        assert fast_count(config, size) == expected, (config, size)


@pytest.mark.parametrize("block", sorted(BLOCK_TYPES))
@pytest.mark.parametrize("preact", [False, True])
@pytest.mark.parametrize("shortcut", ["projection", "identity"])
def test_fast_count_equals_fvcore_for_every_registered_block(block: str, preact: bool, shortcut: str) -> None:
    config = ResNetConfig(
        stages=(Stage(2, 8), Stage(1, 12), Stage(1, 4)),
        block=block,
        preact=preact,
        shortcut=shortcut,
        se=SqueezeExcite("blocks", 4),
    )
    assert fast_count(config, 15) == count_model(build_model(config, 15), 15)


def test_a_block_type_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A type registered with no other code is built, shaped and counted alike."""
    monkeypatch.setattr(blocks, "BLOCK_TYPES", dict(BLOCK_TYPES))
    for module in (geometry, counts, memory, resnet):
        monkeypatch.setattr(module, "BLOCK_TYPES", blocks.BLOCK_TYPES)
    three = blocks.register_block(BlockType("three", 2, (BlockConv(3), BlockConv(5, strided=True), BlockConv(1))))
    for preact in (False, True):
        config = ResNetConfig(stages=(Stage(1, 6), Stage(2, 5)), block=three.name, preact=preact)
        model = build_model(config, 16)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
        assert fast_count(config, 16) == count_model(model, 16)
        assert memory.footprint(config, 16) == memory.measure_footprint(model, 16)
        assert resnet_geometry(config, 16).out_channels == 5 * three.expansion


def test_block_names_of_the_config_are_the_registry() -> None:
    with pytest.raises(SpecError, match=r"'wide' is not one of \['basic', 'bottleneck'\]"):
        parse_spec("model: {block: wide}", "x.yaml")
    assert typing.get_args(typing.get_type_hints(ResNetConfig)["block"]) == tuple(BLOCK_TYPES)


@pytest.mark.parametrize("name", [n for n, c in VARIANTS.items() if isinstance(c, ResNetConfig)])
def test_fast_count_equals_fvcore_on_variants(name: str) -> None:
    config = VARIANTS[name]
    size = 32 if config.stem.stride == 1 else 64
    assert fast_count(config, size) == count_model(build_model(config, size), size)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet152"])
@pytest.mark.parametrize("freeze", ["none", "all_but_last_stage", "all_but_head"])
def test_fast_count_equals_fvcore_on_torchvision(name: str, freeze: str) -> None:
    config = TorchvisionResNetConfig(name=name, num_classes=10, freeze=freeze, dropout=0.1)  # type: ignore[arg-type]
    assert fast_count(config, 32) == count_model(build_model(config), 32)


def test_known_counts() -> None:
    assert fast_count(VARIANTS["se_resnet_443"]).params == 4_697_742
    # torchvision's published size and fvcore's 1.82 GFLOPs for ResNet-18 at 224x224.
    assert fast_count(TorchvisionResNetConfig(name="resnet18"), 224) == Counts(11_689_512, 11_689_512, 1_819_065_856)
    assert fast_count(TorchvisionResNetConfig(name="resnet50", freeze="all_but_head")).trainable_params == 2_049_000


def test_aux_head_counts_params_but_not_flops() -> None:
    base = ResNetConfig(stages=(Stage(1, 8), Stage(1, 16)))
    with_aux = ResNetConfig(stages=base.stages, aux_head=AuxHead(0, (5,)))
    a, b = fast_count(base), fast_count(with_aux)
    assert b.params == a.params + (8 * 5 + 5) + (5 * 10 + 10)
    assert b.flops == a.flops


def test_fast_count_rejects_what_build_model_rejects() -> None:
    config = ResNetConfig(stages=(Stage(1, 8), Stage(1, 8), Stage(1, 8)), pool_kernel=8)
    with pytest.raises(InvalidValue, match="pool_kernel"):
        fast_count(config, 16)


def test_count_model_restores_training_mode() -> None:
    model = build_model(VARIANTS["resnet20"])
    model.train()
    count_model(model, 32)
    assert model.training


def test_check_budget() -> None:
    counts = Counts(params=4_912_330, trainable_params=4_912_330, flops=700_000_000)
    assert check_budget(counts, BudgetConfig()) is None
    assert check_budget(counts, BudgetConfig(max_params=5_000_000, max_flops=10**9)) is None
    assert check_budget(counts, BudgetConfig(max_params=4_000_000)) == "4,912,330 params > max 4,000,000"
    assert check_budget(counts, BudgetConfig(max_params=4_000_000, max_flops=500_000_000)) == (
        "4,912,330 params > max 4,000,000; 700,000,000 FLOPs > max 500,000,000"
    )


def test_constraint_values() -> None:
    counts = Counts(params=5_000, trainable_params=100, flops=2_000)
    assert constraint_values(counts, BudgetConfig()) == ()
    assert constraint_values(counts, BudgetConfig(max_params=10_000)) == (-0.5,)
    assert constraint_values(counts, BudgetConfig(max_params=5_000, max_flops=1_000)) == (0.0, 1.0)


SPACES = __import__("pathlib").Path(__file__).resolve().parents[1] / "spaces"


@pytest.mark.slow
def test_fast_count_equals_fvcore_on_200_samples_of_the_main_space() -> None:
    from search.config import load_spec, random_samples

    spec = load_spec(SPACES / "cifar_5m.yaml")
    configs = list(random_samples(spec.space, 200, seed=11))
    assert len(configs) == 200
    for config in configs:
        assert fast_count(config.model, 32) == count_model(build_model(config.model, 32), 32), config.model


def test_count_spec_of_a_space_reports_extremes_and_the_share_that_fits() -> None:
    from search.budget import count_spec
    from search.config import load_spec

    report = count_spec(load_spec(SPACES / "cifar_5m.yaml"), samples=300)
    params = [s.counts.params for s in report.sizes]
    assert params == sorted(params)
    assert report.sizes[0].fits and not report.sizes[-1].fits
    assert 0 < report.fit_share < 1
    assert report.fit_share == sum(p <= 5_000_000 for p in params) / len(params)
    data = report.as_dict()
    assert data["smallest"]["params"] == params[0] and data["largest"]["fits_budget"] is False
