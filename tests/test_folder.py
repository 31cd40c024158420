"""FolderDataset: metadata.jsonl and sidecar .txt captions, bad files skipped with one warning each."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from dalle2.data import DatasetError, open_dataset
from dalle2.data.folder import FolderDataset


def save(path: Path, size=(40, 30), color=(255, 0, 0), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def png_bytes(size=(40, 30), color=(0, 128, 255)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def open_logged(caplog, *args, **kwargs) -> tuple[FolderDataset, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dalle2.data.folder"):
        ds = FolderDataset(*args, **kwargs)
    messages = [r.getMessage() for r in caplog.records if r.name == "dalle2.data.folder"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert all("\n" not in m for m in messages)
    return ds, messages


def test_metadata_jsonl_with_bad_entries(tmp_path: Path, caplog) -> None:
    save(tmp_path / "a.png", color=(255, 0, 0))
    save(tmp_path / "sub" / "b.jpg", size=(30, 50), color=(0, 255, 0))
    save(tmp_path / "c.webp", color=(0, 0, 255), fmt="WEBP")
    (tmp_path / "broken.png").write_bytes(png_bytes(size=(64, 64))[:60])  # truncated PNG
    (tmp_path / "fake.png").write_text("I am a text file, not a PNG\n")
    lines = [
        {"file_name": "a.png", "text": "a red square"},
        {"file_name": "sub/b.jpg", "text": "a green rectangle"},
        {"file_name": "c.webp", "text": "a blue square"},
        {"file_name": "broken.png", "text": "broken"},
        {"file_name": "fake.png", "text": "fake"},
        {"file_name": "missing.png", "text": "missing"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n\n"
    (tmp_path / "metadata.jsonl").write_text(text)

    ds, messages = open_logged(caplog, tmp_path, resolution=16)
    assert (ds.name, ds.resolution, len(ds)) == ("folder", 16, 3)
    assert ds.files == ["a.png", "sub/b.jpg", "c.webp"]
    skipped = dict(ds.skipped)
    assert len(ds.skipped) == 4
    assert "broken.png" in skipped and "fake.png" in skipped
    assert any("missing.png" in f"{k} {v}" for k, v in ds.skipped)
    assert any("malformed JSON" in v for v in skipped.values())
    # one line per skipped entry, naming it, plus the summary
    assert len(messages) == 5
    for name in ("broken.png", "fake.png", "missing.png", "line 7"):
        assert sum(name in m for m in messages) == 1, (name, messages)
    assert "skipped 4 of 7 files" in messages[-1]

    s = ds[1]
    assert s["caption"] == "a green rectangle" and s["meta"] == {"file_name": "sub/b.jpg"}
    assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
    assert torch.allclose(s["image"][:, 8, 8], torch.tensor([-1.0, 1.0, -1.0]), atol=0.05, rtol=0)
    for i in range(len(ds)):  # never fails
        assert ds[i]["image"].shape == (3, 16, 16)
    assert isinstance(open_dataset(f"folder:{tmp_path}", resolution=16), FolderDataset)


def test_sidecar_txt_and_center_crop(tmp_path: Path, caplog) -> None:
    # a wide image: left third red, middle third green, right third blue -> the crop keeps green
    wide = Image.new("RGB", (90, 30), (255, 0, 0))
    wide.paste((0, 255, 0), (30, 0, 60, 30))
    wide.paste((0, 0, 255), (60, 0, 90, 30))
    wide.save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text("  three stripes \n")
    tall = Image.new("RGB", (20, 80), (255, 255, 255))
    (tmp_path / "deep").mkdir()
    tall.save(tmp_path / "deep" / "tall.bmp")
    (tmp_path / "deep" / "tall.txt").write_text("a white bar")
    save(tmp_path / "nocaption.png")  # no sidecar: skipped
    (tmp_path / "notes.txt").write_text("a caption without an image is ignored")

    ds, messages = open_logged(caplog, str(tmp_path), resolution=24)
    assert ds.files == ["deep/tall.bmp", "wide.png"]
    assert ds.captions == ["a white bar", "three stripes"]
    assert [f for f, _ in ds.skipped] == ["nocaption.png"] and len(messages) == 2
    for i in range(2):
        assert ds[i]["image"].shape == (3, 24, 24)
    assert torch.all(ds[1]["image"][1] > 0.9) and torch.all(ds[1]["image"][0] < -0.9)  # all green
    assert torch.all(ds[0]["image"] > 0.9)
    assert len(FolderDataset(tmp_path, length=1)) == 1


def test_uncached_reads_match(tmp_path: Path) -> None:
    save(tmp_path / "x.png", size=(33, 21), color=(10, 200, 30))
    (tmp_path / "x.txt").write_text("x")
    cached = FolderDataset(tmp_path, resolution=8)
    uncached = FolderDataset(tmp_path, resolution=8, cache_bytes=0)
    assert torch.equal(cached[0]["image"], uncached[0]["image"])


def test_transparent_and_grayscale(tmp_path: Path) -> None:
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("L", (20, 20), 0).save(tmp_path / "gray.png")
    for stem in ("clear", "gray"):
        (tmp_path / f"{stem}.txt").write_text(stem)
    ds = FolderDataset(tmp_path, resolution=8)
    assert torch.all(ds[0]["image"] == 1.0)  # transparent -> white
    assert torch.all(ds[1]["image"] == -1.0)


def test_empty_missing_and_uncaptioned(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        FolderDataset(tmp_path / "absent")
    with pytest.raises(DatasetError, match="no images"):
        FolderDataset(tmp_path)
    save(tmp_path / "a.png")
    save(tmp_path / "b.png")
    with pytest.raises(DatasetError, match="no captions"):
        FolderDataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(DatasetError, match="lists no images"):
        FolderDataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "zzz.png", "text": "t"}) + "\n")
    with pytest.raises(DatasetError, match="no usable"):
        FolderDataset(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        FolderDataset(tmp_path / "a.png")
    with pytest.raises(DatasetError, match="need a path"):
        open_dataset("folder:")


def test_decompression_bomb_skipped(tmp_path: Path, monkeypatch, caplog) -> None:
    save(tmp_path / "big.png", size=(64, 64))
    save(tmp_path / "ok.png", size=(8, 8))
    (tmp_path / "big.txt").write_text("big")
    (tmp_path / "ok.txt").write_text("ok")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 > 1000 (warning), > 2000 (error)
    ds, messages = open_logged(caplog, tmp_path, resolution=8)
    assert ds.files == ["ok.png"] and len(messages) == 2
    assert "decompression bomb" in dict(ds.skipped)["big.png"]
