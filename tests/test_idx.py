"""IDX reader and the Fashion-MNIST / MNIST datasets, on small files written here."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dalle2.data import DatasetError, open_dataset
from dalle2.data.idx import (
    FASHION_CLASSES,
    MNIST_CLASSES,
    IdxDataset,
    class_prompt,
    classes_for,
    read_idx,
)

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    code = CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_split(root: Path, n: int, prefix: str, gz: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)  # never 0: padding is then visible
    labels = (np.arange(n) % 10).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return images, labels


@pytest.fixture
def idx_root(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    images, labels = make_split(tmp_path, 23, "train", gz=True, seed=0)
    make_split(tmp_path, 7, "t10k", gz=False, seed=1)
    return tmp_path, images, labels


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_roundtrip(tmp_path: Path, gz: bool, dtype) -> None:
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4)
    array = (array % 256 if dtype == np.uint8 else array).astype(dtype)
    path = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), array)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, array)
    labels = write_idx(tmp_path / "l.idx", np.array([3, 1, 4, 1, 5], dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(labels), [3, 1, 4, 1, 5])


def test_read_idx_bad_magic_and_truncated(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8))
    (tmp_path / "magic").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DatasetError, match="magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "code").write_bytes(b"\x00\x00\x07" + good[3:])
    with pytest.raises(DatasetError, match="magic"):
        read_idx(tmp_path / "code")
    (tmp_path / "short").write_bytes(good[:-10])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "header").write_bytes(good[:9])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "header")
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "tiny")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(DatasetError, match="gzip"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(DatasetError, match="not found"):
        read_idx(tmp_path / "nope")


def test_dataset_labels_captions_images(idx_root) -> None:
    root, images, labels = idx_root
    ds = IdxDataset("fashion-mnist", root=str(root), split="train")
    assert (ds.name, ds.resolution, ds.split, ds.num_classes) == ("fashion-mnist", 32, "train", 10)
    assert ds.classes == FASHION_CLASSES and len(ds) == 23
    np.testing.assert_array_equal(ds.labels, labels)
    captions = set()
    for i in range(len(ds)):
        s = ds[i]
        image, label = s["image"], int(labels[i])
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert -1.0 <= image.min() and image.max() <= 1.0
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert torch.all(image[:, border] == -1.0)  # black padding
        expected = torch.from_numpy(images[i].astype(np.float32)) / 127.5 - 1
        assert torch.allclose(image[0, 2:30, 2:30], expected, atol=1e-6)
        assert s["meta"] == {"label": label, "class_name": FASHION_CLASSES[label], "index": i}
        assert FASHION_CLASSES[label] in s["caption"]
        assert s["caption"] == ds[i]["caption"]  # deterministic
        captions.add(s["caption"])
    assert len(captions) > 10  # several templates in use
    test = IdxDataset("fashion-mnist", root=root, split="test")
    assert len(test) == 7
    assert len(IdxDataset("fashion-mnist", root=root, length=5)) == 5


def test_other_resolution_and_open_dataset(idx_root) -> None:
    root, _, _ = idx_root
    ds = open_dataset(f"mnist:{root}", split="test", resolution=64)
    assert isinstance(ds, IdxDataset) and ds.name == "mnist" and ds.classes == MNIST_CLASSES
    s = ds[3]
    assert s["image"].shape == (3, 64, 64)
    assert -1.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["meta"]["class_name"] == "three"
    assert "three" in s["caption"] or "3" in s["caption"]
    assert open_dataset(f"fashion-mnist:{root}", resolution=16)[0]["image"].shape == (3, 16, 16)


def test_prompts() -> None:
    assert class_prompt("fashion-mnist", 7) == "a photo of a sneaker"
    assert class_prompt("fashion-mnist", 9) == "a photo of an ankle boot"
    assert class_prompt("fashion-mnist", 1, 3) == "a picture of a trouser"
    assert class_prompt("mnist", 7) == "a handwritten digit seven"
    assert class_prompt("mnist", 7, 1) == "the number 7 written by hand"
    assert len({class_prompt("fashion-mnist", 9, t) for t in range(5)}) == 5
    assert classes_for("mnist")[0] == "zero" and classes_for("fashion-mnist") == FASHION_CLASSES
    with pytest.raises(DatasetError):
        classes_for("cifar")


def test_missing_data_explains(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt install dataset-fashion-mnist") as info:
        IdxDataset("fashion-mnist", root=tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value) and "fashion-mnist:DIR" in str(info.value)
    make_split(tmp_path, 3, "train", gz=False, seed=0)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte") as info:
        IdxDataset("mnist", root=tmp_path)
    assert "mnist:DIR" in str(info.value)
    with pytest.raises(DatasetError, match="splits"):
        IdxDataset("mnist", root=tmp_path, split="validation")


def test_mismatched_counts(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DatasetError, match="labels"):
        IdxDataset("mnist", root=tmp_path)


SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_system_fashion_mnist() -> None:
    train = open_dataset("fashion-mnist")
    test = open_dataset("fashion-mnist", split="test")
    assert len(train) == 60000 and len(test) == 10000
    assert sorted(np.unique(train.labels).tolist()) == list(range(10))
    s = test[0]
    assert s["image"].shape == (3, 32, 32) and s["meta"]["class_name"] in s["caption"]
