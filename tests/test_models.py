"""Models: every registered variant trains, exact sizes, torchvision weights and freezing."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from search.config import (
    AuxHead,
    InvalidValue,
    ModelConfig,
    ResNetConfig,
    SqueezeExcite,
    Stage,
    Stem,
    TorchvisionResNetConfig,
    UserError,
)
from search.config.blocks import BLOCK_TYPES
from search.models import VARIANTS, build_model
from search.models.resnet import PadShortcut

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def n_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def input_size(config: ModelConfig) -> int:
    """CIFAR-style nets see 32x32; ImageNet-style ones (strided stem) 64x64 to keep a map left."""
    if isinstance(config, TorchvisionResNetConfig) or config.stem.stride > 1:
        return 64
    return 32


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_forward_backward(name: str) -> None:
    config = VARIANTS[name]
    size = input_size(config)
    torch.manual_seed(0)
    model = build_model(config, size)
    model.train()
    out = model(torch.randn(2, 3, size, size))
    has_aux = isinstance(config, ResNetConfig) and config.aux_head is not None
    logits, aux = out if has_aux else (out, None)
    assert logits.shape == (2, config.num_classes)
    loss = logits.logsumexp(1).mean() + (aux.logsumexp(1).mean() if aux is not None else 0)
    loss.backward()
    assert torch.isfinite(logits).all()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if aux is not None:
        assert aux.shape == (2, config.num_classes)
        model.eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, size, size)).shape == (2, config.num_classes)


def test_seed_003_se_resnet_has_exact_param_count() -> None:
    config = ResNetConfig(
        stages=(Stage(4, 64), Stage(4, 128), Stage(3, 256)),
        stem=Stem(64, 3, 1, False),
        block="basic",
        shortcut="projection",
        se=SqueezeExcite("stem", 16),
        pool_kernel=8,
        num_classes=10,
    )
    assert config == VARIANTS["se_resnet_443"]
    assert n_params(build_model(config, 32)) == 4_697_742


def test_cifar_resnets_match_he_et_al() -> None:
    # Option A shortcuts add no parameters: the classic 0.27M / 0.46M / 0.85M.
    assert n_params(build_model(VARIANTS["resnet20"])) == 269_722
    assert n_params(build_model(VARIANTS["resnet32"])) == 464_154
    assert n_params(build_model(VARIANTS["resnet56"])) == 853_018


@pytest.mark.parametrize(
    ("name", "expected"), [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)]
)
def test_torchvision_param_counts(name: str, expected: int) -> None:
    ours = build_model(TorchvisionResNetConfig(name=name))
    assert n_params(ours) == expected == n_params(getattr(torchvision.models, name)())


def test_our_resnet_matches_torchvision_architecture() -> None:
    # Our ImageNet-style config is torchvision's ResNet-34 with a different head.
    ours = build_model(
        ResNetConfig(
            num_classes=1000,
            stem=Stem(64, 7, 2, True),
            stages=(Stage(3, 64), Stage(4, 128), Stage(6, 256), Stage(3, 512)),
        )
    )
    assert n_params(ours) == 21_797_672


def test_build_is_deterministic_given_the_seed() -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        states.append(build_model(VARIANTS["resnet20"]).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_aux_head_only_in_training_mode() -> None:
    config = ResNetConfig(stages=(Stage(1, 8), Stage(1, 16)), aux_head=AuxHead(0, (5,)))
    model = build_model(config)
    x = torch.randn(2, 3, 16, 16)
    logits, aux = model(x)
    assert logits.shape == aux.shape == (2, 10)
    assert isinstance(model.eval()(x), torch.Tensor)


def test_identity_shortcut_is_parameter_free_and_handles_narrowing() -> None:
    # 16 -> 8 channels narrows (option A drops channels), 8 -> 32 pads, odd 15x15 input.
    config = ResNetConfig(
        stem=Stem(16, 3, 1, False),
        stages=(Stage(1, 8), Stage(2, 32), Stage(1, 32)),
        shortcut="identity",
        preact=True,
    )
    model = build_model(config)
    assert sum(isinstance(m, PadShortcut) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())
    assert model(torch.randn(2, 3, 15, 15)).shape == (2, 10)


def test_zero_init_residual_zeroes_last_bn_of_every_block() -> None:
    for block in BLOCK_TYPES:
        for preact in (False, True):
            config = ResNetConfig(
                stages=(Stage(2, 8), Stage(1, 8)), block=block, preact=preact, zero_init_residual=True
            )
            model = build_model(config)
            blocks = [b for stage in model.stages for b in stage]
            assert len(blocks) == 3
            assert all(torch.all(b.last_bn().weight == 0) for b in blocks)


def test_pool_kernel_larger_than_feature_map_is_invalid() -> None:
    config = ResNetConfig(stages=(Stage(1, 8), Stage(1, 8), Stage(1, 8)), pool_kernel=8)
    build_model(config, 32)  # 8x8 map: fits
    with pytest.raises(InvalidValue, match="pool_kernel"):
        build_model(config, 16)


def test_pool_kernel_classifier_input_follows_image_size() -> None:
    model = build_model(VARIANTS["se_resnet_443"], 64)  # 16x16 map, AvgPool2d(8): 2x2 positions
    assert model.head[-1].in_features == 256 * 4
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


# --------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize(
    ("freeze", "trainable"),
    [("none", None), ("all_but_last_stage", ("layer4.", "fc.")), ("all_but_head", ("fc.",))],
)
def test_freeze_leaves_exactly_the_right_params_trainable(freeze: str, trainable: tuple[str, ...] | None) -> None:
    model = build_model(TorchvisionResNetConfig(name="resnet18", num_classes=10, freeze=freeze))  # type: ignore[arg-type]
    for name, param in model.named_parameters():
        assert param.requires_grad == (trainable is None or name.startswith(trainable)), name


def test_torchvision_dropout_keeps_state_dict_keys() -> None:
    plain = build_model(TorchvisionResNetConfig(name="resnet18", num_classes=10))
    dropped = build_model(TorchvisionResNetConfig(name="resnet18", num_classes=10, dropout=0.2))
    assert any(isinstance(m, nn.Dropout) for m in dropped.modules())
    assert list(plain.state_dict()) == list(dropped.state_dict())


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty torch hub dir, and any download attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def test_weights_round_trip_through_a_local_file(tmp_path: Path, no_network: Path) -> None:
    config = TorchvisionResNetConfig(name="resnet18", num_classes=10)
    torch.manual_seed(0)
    saved = build_model(config).state_dict()
    path = tmp_path / "w.pt"
    torch.save(saved, path)
    torch.manual_seed(1)
    loaded = build_model(TorchvisionResNetConfig(name="resnet18", num_classes=10, weights=str(path))).state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_imagenet_weights_load_into_another_num_classes_except_fc(no_network: Path) -> None:
    # A 1000-class file at the hub cache path of ResNet18_Weights.IMAGENET1K_V1.
    imagenet = torchvision.models.resnet18().state_dict()
    checkpoints = no_network / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(imagenet, checkpoints / "resnet18-f37072fd.pth")
    model = build_model(TorchvisionResNetConfig(name="resnet18", num_classes=10, weights="IMAGENET1K_V1"))
    state = model.state_dict()
    assert torch.equal(state["layer4.1.bn2.running_var"], imagenet["layer4.1.bn2.running_var"])
    assert torch.equal(state["conv1.weight"], imagenet["conv1.weight"])
    assert state["fc.weight"].shape == (10, 512)


def test_mismatching_weights_file_is_a_user_error(tmp_path: Path, no_network: Path) -> None:
    path = tmp_path / "r34.pt"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(UserError, match=r"do not fit resnet18: unexpected layer1\.2\."):
        build_model(TorchvisionResNetConfig(name="resnet18", weights=str(path)))
    junk = tmp_path / "junk.pt"
    torch.save([1, 2, 3], junk)
    with pytest.raises(UserError, match="not a state dict"):
        build_model(TorchvisionResNetConfig(name="resnet18", weights=str(junk)))


def test_missing_hub_weights_is_a_user_error_without_download(no_network: Path) -> None:
    with pytest.raises(UserError, match="ResNet18_Weights.IMAGENET1K_V1 not found at .*resnet18-f37072fd.pth"):
        build_model(TorchvisionResNetConfig(name="resnet18", weights="IMAGENET1K_V1"))
    with pytest.raises(UserError, match="no such file, and not one of ResNet18_Weights"):
        build_model(TorchvisionResNetConfig(name="resnet18", weights="nowhere/w.pt"))
