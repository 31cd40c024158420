"""ShardDataset and write_shards: tar shards written here, streamed back, split across workers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dalle2.data import DatasetError, collate, open_dataset
from dalle2.data.webdataset import ShardDataset, expand_shards, write_shards

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 255, 255)]


def make_samples(n: int) -> list[tuple[object, str]]:
    """A mix of PIL images of various sizes and tensors in [-1, 1]."""
    samples: list[tuple[object, str]] = []
    for i in range(n):
        color = COLORS[i % len(COLORS)]
        if i % 3 == 2:
            image = torch.tensor(color, dtype=torch.float32).div(127.5).sub(1).view(3, 1, 1).expand(3, 20, 20)
        else:
            image = Image.new("RGB", (24 + 4 * i, 16 + i), color)
        samples.append((image, f"sample {i}: a {color} thing"))
    return samples


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, list[tuple[object, str]]]:
    samples = make_samples(10)
    paths = write_shards(samples, tmp_path / "shards", per_shard=4)
    assert [Path(p).name for p in paths] == ["000000.tar", "000001.tar", "000002.tar"]
    return tmp_path / "shards", samples


def test_stream_all_samples(shards) -> None:
    root, samples = shards
    ds = ShardDataset(str(root / "{000000..000002}.tar"), resolution=16)
    assert (ds.name, ds.resolution, len(ds.urls)) == ("webdataset", 16, 3)
    out = list(ds)
    assert [s["caption"] for s in out] == [c for _, c in samples]
    for i, s in enumerate(out):
        assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
        expected = torch.tensor(COLORS[i % len(COLORS)], dtype=torch.float32) / 127.5 - 1
        assert torch.allclose(s["image"][:, 8, 8], expected, atol=0.02, rtol=0)
        assert s["meta"]["key"] == f"{i:09d}"
        assert s["meta"]["shard"] == str(root / f"{i // 4:06d}.tar")
    # the same shards by glob, by directory and through open_dataset
    assert len(list(ShardDataset(str(root / "*.tar")))) == 10
    assert len(list(ShardDataset(root))) == 10
    via_spec = open_dataset(f"webdataset:{root}/{{000000..000002}}.tar", resolution=8)
    assert isinstance(via_spec, ShardDataset) and next(iter(via_spec))["image"].shape == (3, 8, 8)
    # length caps the samples yielded
    capped = ShardDataset(root, length=3)
    assert len(capped) == 3 and len(list(capped)) == 3


def keys_seen(ds: ShardDataset, workers: int, batch_size: int = 2) -> list[str]:
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    return [m["key"] for batch in loader for m in batch["meta"]]


def test_two_workers_disjoint(shards) -> None:
    root, samples = shards
    keys = keys_seen(ShardDataset(root), workers=2)
    assert len(keys) == len(samples) and sorted(keys) == [f"{i:09d}" for i in range(10)]


def test_fewer_shards_than_workers_split_by_sample(tmp_path: Path) -> None:
    write_shards(make_samples(7), tmp_path / "one", per_shard=100)
    keys = keys_seen(ShardDataset(tmp_path / "one"), workers=2)
    assert sorted(keys) == [f"{i:09d}" for i in range(7)]
    capped = keys_seen(ShardDataset(tmp_path / "one", length=5), workers=2, batch_size=1)
    assert len(capped) == len(set(capped)) == 5


def test_simulated_ranks_disjoint(shards, monkeypatch) -> None:
    root, _ = shards
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append({s["meta"]["key"] for s in ShardDataset(root)})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 10


def test_shuffle_is_a_permutation(shards) -> None:
    root, _ = shards
    ds = ShardDataset(root, shuffle=4, seed=1)
    first = [s["meta"]["key"] for s in ds]
    ds.set_epoch(1)
    second = [s["meta"]["key"] for s in ds]
    assert sorted(first) == sorted(second) == [f"{i:09d}" for i in range(10)]
    assert first != second


def test_corrupt_samples_skipped(tmp_path: Path, caplog) -> None:
    good = Image.new("RGB", (10, 10), (0, 0, 255))
    samples = [(good, "first"), (b"\x89PNG\r\n\x1a\n this is not really a png", "corrupt"), (good, "last")]
    write_shards(samples, tmp_path, per_shard=10)
    with caplog.at_level(logging.WARNING, logger="dalle2.data.webdataset"):
        out = list(ShardDataset(tmp_path / "000000.tar"))
    assert [s["caption"] for s in out] == ["first", "last"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "000000001" in messages[0] and "\n" not in messages[0]


def test_truncated_shard_skipped(tmp_path: Path, caplog) -> None:
    paths = write_shards(make_samples(6), tmp_path, per_shard=3)
    data = Path(paths[0]).read_bytes()
    Path(paths[0]).write_bytes(data[: len(data) // 2 + 100])
    with caplog.at_level(logging.WARNING, logger="dalle2.data.webdataset"):
        out = list(ShardDataset(tmp_path))
    captions = [s["caption"] for s in out]
    assert captions[-3:] == [f"sample {i}: a {COLORS[i]} thing" for i in range(3, 6)]
    assert caplog.records  # the damage was reported


def test_missing_shards(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="matches no files"):
        ShardDataset(str(tmp_path / "*.tar"))
    with pytest.raises(DatasetError, match="not found"):
        ShardDataset(str(tmp_path / "{000..003}.tar"))
    write_shards(make_samples(2), tmp_path, per_shard=1)
    with pytest.raises(DatasetError, match=r"1 of 3 shards .* not found: .*000002\.tar"):
        expand_shards(str(tmp_path / "{000000..000002}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .tar shards"):
        ShardDataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="shard pattern"):
        open_dataset("webdataset:")


def test_write_shards_inputs(tmp_path: Path) -> None:
    gray = np.full((12, 14), 200, dtype=np.uint8)
    uint8_tensor = torch.full((3, 9, 9), 255, dtype=torch.uint8)
    dicts = [{"image": gray, "caption": "gray"}, {"image": uint8_tensor, "caption": "white"}]
    paths = write_shards(dicts, str(tmp_path / "train-%03d.tar"), per_shard=1, image_format="jpg")
    assert [Path(p).name for p in paths] == ["train-000.tar", "train-001.tar"]
    out = list(ShardDataset(str(tmp_path / "train-{000..001}.tar"), resolution=8))
    assert [s["caption"] for s in out] == ["gray", "white"]
    assert abs(out[0]["image"].mean().item() - (200 / 127.5 - 1)) < 0.03
    assert write_shards([], tmp_path / "none") == []
    with pytest.raises(DatasetError):
        write_shards(dicts, tmp_path / "x.tar")
