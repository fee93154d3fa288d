"""search.data: locating, caching, splitting, archives, augmentation."""

from __future__ import annotations

import io
import pickle
import shutil
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import RealCifar10
from PIL import Image

import search.data as data
import search.data.decode as decode
import search.data.readers as readers
import search.data.sources as sources
from search.config import Augment, DataConfig, TrainConfig, UserError
from search.data import ImageDataset, TensorSplit, augment_batch, load_dataset, normalize

TINY_CLASSES = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}  # as in conftest


def write_class_images(
    folder: Path, colour: tuple[int, int, int], count: int, rng: np.random.Generator, suffix: str = ".png"
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.clip(np.asarray(colour) + rng.normal(0, 25, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}{suffix}")


FOLDER = DataConfig(dataset="imagefolder")


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RESNET_SEARCH_CACHE", str(cache))
    return cache


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(sources, "_download", fail)


def image_keys(split: TensorSplit) -> set[bytes]:
    return {img.numpy().tobytes() for img in split.images}


def make_tree(root: Path, classes: dict[str, tuple[int, int, int]], count: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        write_class_images(root / name, colour, count, rng)
    return root


# --------------------------------------------------------------------------- loading and cache


def test_imagefolder_loads_as_uint8_splits(tiny_imagefolder: Path) -> None:
    ds = load_dataset(FOLDER, data_dir=tiny_imagefolder)
    assert isinstance(ds, ImageDataset)
    assert ds.classes == tuple(sorted(TINY_CLASSES)) and ds.num_classes == 3 and ds.image_size == 32
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 32, 32)
        assert split.labels.dtype == torch.int64 and len(split.labels) == len(split.images)
    assert len(ds.test) == 18 and len(ds.train) + len(ds.val) == 36
    assert torch.bincount(ds.val.labels).tolist() == [1, 1, 1]  # round(12 * 0.1) per class
    # Colours survive decoding: red's red channel dominates.
    red = ds.train.images[ds.train.labels == ds.classes.index("red")].float().mean(dim=(0, 2, 3))
    assert red[0] > 150 and red[1] < 100
    both = ds.train_plus_val()
    assert len(both) == 36 and torch.equal(both.images[: len(ds.train)], ds.train.images)


def test_second_load_reads_the_cache_without_decoding(
    tiny_imagefolder: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_dataset(FOLDER, data_dir=tiny_imagefolder)
    assert list((fresh_cache / "tensors").glob("*.pt"))

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(readers, "decode_into", no_decode)
    second = load_dataset(FOLDER, data_dir=tiny_imagefolder)
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    assert first.mean == second.mean and first.std == second.std
    with pytest.raises(AssertionError, match="decoded again"):  # another image_size is another cache entry
        load_dataset(DataConfig(dataset="imagefolder", image_size=16), data_dir=tiny_imagefolder)


def test_adding_an_image_invalidates_the_cache(tmp_path: Path, fresh_cache: Path) -> None:
    root = make_tree(tmp_path / "tree", TINY_CLASSES, 6)
    assert len(load_dataset(FOLDER, data_dir=root).train_plus_val()) == 15
    write_class_images(root / "red", (220, 40, 40), 7, np.random.default_rng(1), suffix=".jpg")
    n = len(load_dataset(FOLDER, data_dir=root).train_plus_val()) + len(load_dataset(FOLDER, data_dir=root).test)
    assert n == 25


def test_one_tree_is_split_into_train_and_test(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", TINY_CLASSES, 12)
    ds = load_dataset(FOLDER, data_dir=root)
    assert torch.bincount(ds.test.labels).tolist() == [2, 2, 2]  # 1/6 of each class
    assert len(ds.train_plus_val()) == 30
    assert not image_keys(ds.test) & image_keys(ds.train_plus_val())
    again = load_dataset(DataConfig(dataset="imagefolder", split_seed=5), data_dir=root)
    assert torch.equal(again.test.images, ds.test.images)  # the test set never follows split_seed


def test_wrapping_folder_and_cifar_name_with_class_folders(tiny_imagefolder: Path, tmp_path: Path) -> None:
    wrapper = tmp_path / "download"
    shutil.copytree(tiny_imagefolder, wrapper / "cifar10")
    ds = load_dataset(DataConfig(dataset="cifar10"), data_dir=wrapper, download=False)
    assert ds.classes == tuple(sorted(TINY_CLASSES))


def test_grayscale_rgba_jpeg_resize_and_bad_images(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", {"a": (200, 0, 0), "b": (0, 200, 0)}, 6)
    Image.new("L", (32, 32), 128).save(root / "a" / "gray.png")
    Image.new("RGBA", (32, 32), (1, 2, 3, 4)).save(root / "b" / "rgba.png")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "b" / "photo.jpg")
    ds = load_dataset(FOLDER, data_dir=root)
    assert len(ds.train_plus_val()) + len(ds.test) == 15

    Image.new("RGB", (48, 40)).save(root / "a" / "big.png")
    with pytest.raises(UserError, match="data.image_size"):
        load_dataset(FOLDER, data_dir=root)
    assert load_dataset(DataConfig(dataset="imagefolder", image_size=16), data_dir=root).image_size == 16

    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # skipped with a warning (test_reliability_inputs)
    ds = load_dataset(DataConfig(dataset="imagefolder", image_size=16), data_dir=root)
    assert len(ds.train_plus_val()) + len(ds.test) == 16  # 15 + big.png, not broken.jpg


def test_process_pool_decodes_in_order_and_reports_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "POOL_MIN_IMAGES", 0)
    monkeypatch.setattr(decode, "DECODE_CHUNK", 5)
    root = make_tree(tmp_path / "tree", TINY_CLASSES, 12)
    files = sorted(root.rglob("*.png"))
    pooled = decode.decode_images(files, None)
    assert np.array_equal(pooled.images, decode.decode_chunk(files, None).images)
    (root / "red" / "bad.png").write_bytes(b"garbage")
    files = sorted(root.rglob("*.png"))
    decoded = decode.decode_images(files, None)
    assert [path.name for path, _ in decoded.skipped] == ["bad.png"]
    assert [files[i] for i in decoded.kept] == [f for f in files if f.name != "bad.png"]


def write_cifar10_pickles(folder: Path, per_batch: int = 20) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {"data": pixels, "labels": [i % 10 for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def test_cifar_pickles(tmp_path: Path) -> None:
    write_cifar10_pickles(tmp_path / "cifar-10-batches-py")
    ds = load_dataset(DataConfig(dataset="cifar10"), data_dir=tmp_path, download=False)  # torchvision's root
    assert ds.classes == tuple(f"c{i}" for i in range(10)) and len(ds.test) == 20 and len(ds.train_plus_val()) == 100
    assert ds.image_size == 32
    with pytest.raises(UserError, match="cifar10 pickles but data.dataset is cifar100"):
        load_dataset(DataConfig(dataset="cifar100"), data_dir=tmp_path, download=False)


def test_download_is_announced_and_goes_to_the_cache(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torchvision

    class FakeCIFAR10:  # never the network: writes what torchvision would
        url = "https://example.invalid/cifar-10-python.tar.gz"

        def __init__(self, root: str, train: bool, download: bool) -> None:
            write_cifar10_pickles(Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    ds = load_dataset(DataConfig(), download=True)
    assert ds.num_classes == 10
    err = capsys.readouterr().err
    assert FakeCIFAR10.url in err and str(fresh_cache) in err
    load_dataset(DataConfig(), download=False)  # now found in the cache


# --------------------------------------------------------------------------- splits and subsets


def test_validation_split_is_deterministic_stratified_and_disjoint(tiny_imagefolder: Path) -> None:
    config = DataConfig(dataset="imagefolder", val_fraction=0.25)
    a, b = load_dataset(config, data_dir=tiny_imagefolder), load_dataset(config, data_dir=tiny_imagefolder)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert torch.bincount(a.val.labels).tolist() == [3, 3, 3]
    assert not image_keys(a.train) & image_keys(a.val)
    other = load_dataset(DataConfig(dataset="imagefolder", val_fraction=0.25, split_seed=1), data_dir=tiny_imagefolder)
    assert image_keys(other.val) != image_keys(a.val)


def test_balanced_subsets_are_nested_and_checked(tiny_imagefolder: Path) -> None:
    def load(**kw: int) -> ImageDataset:
        return load_dataset(DataConfig(dataset="imagefolder", val_fraction=0.25, **kw), data_dir=tiny_imagefolder)

    small, large = load(train_subset=4, val_subset=3), load(train_subset=15, val_subset=6)
    assert torch.bincount(small.train.labels).tolist() == [1, 1, 1]  # 4 // 3 classes
    assert torch.bincount(large.train.labels).tolist() == [5, 5, 5]
    assert torch.bincount(small.val.labels).tolist() == [1, 1, 1]
    assert image_keys(small.train) <= image_keys(large.train) and image_keys(small.val) <= image_keys(large.val)
    assert image_keys(load(val_subset=3).val) == image_keys(small.val)  # val ignores train_subset
    with pytest.raises(UserError, match="train_subset 2 is below the number of classes"):
        load(train_subset=2)
    with pytest.raises(UserError, match="needs 10 images per class"):
        load(train_subset=30)


def test_mean_std_computed_or_from_config(tiny_imagefolder: Path) -> None:
    ds = load_dataset(FOLDER, data_dir=tiny_imagefolder)
    x = ds.train_plus_val().images.double() / 255
    assert np.allclose(ds.mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-6)
    assert np.allclose(ds.std, x.std(dim=(0, 2, 3), correction=0).tolist(), atol=1e-6)
    # Seed 003's recipe is plain config: its constants in data, pad 4 reflect + flip in train.augment.
    seed003 = DataConfig(dataset="imagefolder", mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
    ds = load_dataset(seed003, data_dir=tiny_imagefolder)
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2023, 0.1994, 0.2010)
    assert TrainConfig().augment == Augment(crop_padding=4, padding_mode="reflect", flip=True, cutout=0)


# --------------------------------------------------------------------------- locations


def test_location_precedence(
    tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    def tree(name: str) -> Path:
        return make_tree(tmp_path / name, {f"{name}_a": (200, 0, 0), f"{name}_b": (0, 0, 200)}, 6)

    flag, root, env = tree("flag"), tree("root"), tree("env")
    make_tree(fresh_cache / "cifar10", {"cache_a": (200, 0, 0), "cache_b": (0, 0, 200)}, 6)
    monkeypatch.setenv("RESNET_SEARCH_DATA", str(env))

    def first_class(data_dir: Path | None, config_root: Path | None) -> str:
        config = DataConfig(root=str(config_root) if config_root else None)
        return load_dataset(config, data_dir=data_dir, download=False).classes[0]

    assert first_class(flag, root) == "flag_a"
    assert first_class(None, root) == "root_a"
    assert first_class(None, None) == "env_a"
    monkeypatch.delenv("RESNET_SEARCH_DATA")
    assert first_class(None, None) == "cache_a"


def test_cache_dir_follows_env_and_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESNET_SEARCH_CACHE", str(tmp_path / "mine"))
    assert data.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("RESNET_SEARCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "resnet-search"


@pytest.mark.parametrize("how", ["data_dir", "root", "env"])
def test_named_location_without_data_is_an_error_not_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None, how: str
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    config = DataConfig(root=str(empty) if how == "root" else None)
    if how == "env":
        monkeypatch.setenv("RESNET_SEARCH_DATA", str(empty))
    with pytest.raises(UserError) as err:
        load_dataset(config, data_dir=empty if how == "data_dir" else None, download=True)
    message = str(err.value)
    assert "notes.txt" in message and "train/<class>" in message and "\n" not in message
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(DataConfig(), data_dir=tmp_path / "missing", download=True)


def test_nothing_found_without_download_is_one_line(fresh_cache: Path, no_download: None) -> None:
    with pytest.raises(UserError) as err:
        load_dataset(DataConfig(dataset="cifar10"), download=False)
    message = str(err.value)
    assert "\n" not in message and str(fresh_cache) in message
    assert "data_dir=PATH" in message and "data.root" in message and "RESNET_SEARCH_DATA" in message
    assert "--data-dir" not in message  # the Python parameter, not the CLI flag
    with pytest.raises(UserError, match="no default location"):
        load_dataset(FOLDER, download=True)


# --------------------------------------------------------------------------- archives


def tar_of(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for info, payload in members:
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def file_member(name: str, payload: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def link_member(name: str, kind: bytes, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".zip"])
def test_archives_with_a_wrapping_folder_load(
    tiny_imagefolder: Path, tmp_path: Path, fresh_cache: Path, suffix: str
) -> None:
    archive = tmp_path / f"tiny{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for f in sorted(tiny_imagefolder.rglob("*")):
                zf.write(f, "tiny/" + f.relative_to(tiny_imagefolder).as_posix())
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(tiny_imagefolder, arcname="tiny")
    ds = load_dataset(FOLDER, data_dir=archive)
    assert len(ds.test) == 18 and ds.classes == tuple(sorted(TINY_CLASSES))
    assert len(list((fresh_cache / "extracted").iterdir())) >= 1
    # A folder holding just the archive (like ../shared/data) works too.
    assert load_dataset(FOLDER, data_dir=tmp_path).classes == ds.classes


@pytest.mark.parametrize(
    "members",
    [
        [file_member("data/../../evil.png")],
        [file_member("/tmp/evil-absolute.png")],
        [file_member("data/a.png"), link_member("data/link.png", tarfile.SYMTYPE, "/etc/passwd")],
        [file_member("data/a.png"), link_member("data/hard.png", tarfile.LNKTYPE, "data/a.png")],
        [link_member("data/dev", tarfile.CHRTYPE, "")],
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "device"],
)
def test_unsafe_tar_members_are_refused(tmp_path: Path, fresh_cache: Path, members: list) -> None:
    archive = tar_of(tmp_path, members)
    with pytest.raises(UserError, match="refusing"):
        load_dataset(FOLDER, data_dir=archive)
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil-absolute.png").exists()
    assert not (fresh_cache / "evil.png").exists()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_zip_members_are_refused(tmp_path: Path, fresh_cache: Path, kind: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        if kind == "symlink":
            info = zipfile.ZipInfo("data/link.png")
            info.external_attr = (0o120777) << 16  # S_IFLNK
            zf.writestr(info, "/etc/passwd")
        else:
            zf.writestr(zipfile.ZipInfo("../evil.png" if kind == "dotdot" else "/evil.png"), b"x")
    with pytest.raises(UserError, match="refusing"):
        load_dataset(FOLDER, data_dir=archive)
    assert not (fresh_cache / "evil.png").exists()


# --------------------------------------------------------------------------- augmentation


def random_batch(n: int = 16, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    x = torch.randint(0, 256, (n, 3, 8, 10), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype) / 255


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_crop_and_flip_match_a_per_image_reference(dtype: torch.dtype, mode: str) -> None:
    x = random_batch(dtype=dtype)
    out = augment_batch(x, Augment(crop_padding=3, padding_mode=mode, flip=True), torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    padded = F.pad(x.float(), (3, 3, 3, 3), mode="reflect" if mode == "reflect" else "constant").to(dtype)
    # Each output must be one of the 7 x 7 crops of its padded image, or that crop flipped.
    for i in range(len(x)):
        crops = [padded[i, :, dy : dy + 8, dx : dx + 10] for dy in range(7) for dx in range(7)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    assert not torch.equal(out, x)


def test_augment_is_deterministic_and_padding_modes_differ() -> None:
    x = random_batch(64)
    reflect = Augment(crop_padding=4, padding_mode="reflect")
    a = augment_batch(x, reflect, torch.Generator().manual_seed(3))
    assert torch.equal(a, augment_batch(x, reflect, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, augment_batch(x, reflect, torch.Generator().manual_seed(4)))
    zeros = augment_batch(x, Augment(crop_padding=4, padding_mode="zeros"), torch.Generator().manual_seed(3))
    assert not torch.equal(a, zeros)
    assert (zeros == 0).sum() > (a == 0).sum()  # zero padding shows black borders
    assert augment_batch(x, Augment(crop_padding=0, flip=False)) is x


def test_flip_only_and_cutout() -> None:
    x = random_batch(64) | 1  # no zero pixels, so cutout's zeros can be counted
    flipped = augment_batch(x, Augment(crop_padding=0, flip=True), torch.Generator().manual_seed(0))
    same = [torch.equal(flipped[i], x[i]) for i in range(64)]
    assert 10 < sum(same) < 54
    assert all(s or torch.equal(flipped[i], x[i].flip(-1)) for i, s in enumerate(same))
    cut = augment_batch(x, Augment(crop_padding=0, flip=False, cutout=4), torch.Generator().manual_seed(0))
    zeros_per_image = (cut == 0).all(dim=1).sum(dim=(1, 2))
    assert (zeros_per_image > 0).all() and (zeros_per_image <= 16).all()
    assert (zeros_per_image == 16).any()


def test_augment_is_batched_fast() -> None:
    x = torch.randint(0, 256, (2048, 3, 32, 32), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    augment_batch(x, Augment(cutout=8), gen)
    start = time.perf_counter()
    augment_batch(x, Augment(cutout=8), gen)
    # ~0.02 s on an idle 2-core CPU; the bound is loose because other jobs may share the machine.
    assert time.perf_counter() - start < 2.0


def test_normalize() -> None:
    x = random_batch(4)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    out = normalize(x, mean, std)
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(normalize(x.float() / 255, mean, std), expected, atol=1e-5)
    cl = normalize(x, mean, std, dtype=torch.bfloat16, channels_last=True)
    assert cl.dtype == torch.bfloat16 and cl.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- the real data


@pytest.mark.slow
def test_real_cifar10_archive_decodes_once_then_loads_fast(
    real_cifar10: RealCifar10, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = real_cifar10.first
    assert isinstance(first, ImageDataset)
    assert len(first.train) == 45_000 and len(first.val) == 5_000 and len(first.test) == 10_000
    assert first.classes[0] == "airplane" and first.image_size == 32
    assert np.allclose(first.mean, (0.4913, 0.4821, 0.4465), atol=0.003)

    monkeypatch.setenv("RESNET_SEARCH_CACHE", str(real_cifar10.cache))
    monkeypatch.setattr(readers, "decode_into", lambda *a, **k: pytest.fail("decoded again"))
    start = time.perf_counter()
    second = load_dataset(DataConfig(dataset="cifar10"), data_dir=real_cifar10.archive, download=False)
    load = time.perf_counter() - start
    print(f"\nextract + decode: {real_cifar10.build_s:.1f} s, cached load: {load:.3f} s", file=sys.stderr)
    assert load < 1.0
    assert torch.equal(first.val.images, second.val.images)


class _NamedFiles(readers.ClassFolders):
    """A throwaway format: flat ``<class>_<n>.png`` files, the first three held out for test."""

    kind = "named_files"

    def matches(self, folder: Path, names: set[str]) -> bool:
        return bool(names) and all("_" in name and name.endswith(".png") for name in names)

    def identity(self, root: Path) -> list[Path]:
        return [root]

    def list_images(self, root: Path) -> readers.FileLists:
        files = sorted(root.glob("*.png"))
        classes = sorted({f.name.split("_")[0] for f in files})
        labels = [classes.index(f.name.split("_")[0]) for f in files]
        return files[3:], labels[3:], files[:3], labels[:3], classes


def test_a_data_format_is_one_registration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A format registered with no other code is found, fingerprinted and read."""
    monkeypatch.setattr(readers, "FORMATS", dict(readers.FORMATS))
    readers.register_format(_NamedFiles())
    rng = np.random.default_rng(0)
    for name in ("ant", "bee"):
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"{name}_{i}.png")
    dataset = load_dataset(DataConfig(dataset="imagefolder", val_fraction=0.25), data_dir=tmp_path)
    assert dataset.classes == ("ant", "bee")
    assert len(dataset.test.labels) == 3 and len(dataset.train.labels) + len(dataset.val.labels) == 9
