"""``dalle2 export``: a small self-contained copy that loads and samples like the original."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

import dalle2
from dalle2.cli import main
from dalle2.export import ExportError, export_pipeline, folder_megabytes


def test_export_halves_weights_and_samples_like_the_source(tiny_unclip, tmp_path):
    out = tmp_path / "shipped"
    index = export_pipeline(tiny_unclip, out, note="dalle2 train all --seed 0")
    assert not (out / "training").exists()
    folders = {c["folder"] for c in index["components"].values()}
    assert {p.name for p in out.iterdir()} == {"model_index.json", *folders}
    for weights in out.rglob("*.safetensors"):
        floats = [t for t in load_file(str(weights)).values() if t.is_floating_point()]
        assert floats and all(t.dtype.itemsize == 2 for t in floats), weights
    source_weights = sum(p.stat().st_size for p in tiny_unclip.rglob("*.safetensors") if "training" not in p.parts)
    shipped_weights = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    assert shipped_weights < 0.6 * source_weights
    written = json.loads((out / "model_index.json").read_text())
    assert written["provenance"]["note"] == "dalle2 train all --seed 0"
    assert written["provenance"]["weights_dtype"] == "float16"
    assert written["provenance"]["stages"]["decoder"]["steps"] >= 1
    assert folder_megabytes(out) > 0

    a = dalle2.load(tiny_unclip)("a red circle", n=2, seed=3)
    b = dalle2.load(out)("a red circle", n=2, seed=3)
    assert a[0].size == b[0].size
    diff = np.abs(np.asarray(a[0], dtype=float) - np.asarray(b[0], dtype=float)).mean()
    assert diff < 4.0, diff  # float16 rounding of the weights only


def test_export_errors(tiny_unclip, tmp_path, capsys):
    with pytest.raises(ExportError, match="not a dalle2 pipeline folder"):
        export_pipeline(tmp_path, tmp_path / "x")
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_pipeline(tiny_unclip, out)
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "y")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert main(["export", str(tiny_unclip), str(out), "--overwrite", "--no-half"]) == 0
    assert "unclip pipeline" in capsys.readouterr().out
    floats = [t for t in load_file(str(out / "decoder" / "model.safetensors")).values() if t.is_floating_point()]
    assert all(t.dtype.itemsize == 4 for t in floats)


def test_export_writes_every_component_in_the_current_header(tiny_unclip, tmp_path):
    """A folder saved under an older header (here: the decoder's pre-2026-12 one) ships in today's."""
    import shutil

    source = tmp_path / "old"
    shutil.copytree(tiny_unclip, source)
    config = json.loads((source / "decoder" / "config.json").read_text())
    for key in ("format", "format_version", "class"):
        config.pop(key, None)
    old_header = {"format_version": 1, "class": "ImageDiffusion"}
    (source / "decoder" / "config.json").write_text(json.dumps({**old_header, **config}))
    export_pipeline(source, tmp_path / "out")
    for name in ("clip", "prior", "decoder", "upsampler"):
        header = json.loads((tmp_path / "out" / name / "config.json").read_text())
        assert (header["format"], header["format_version"]) == ("dalle2-component", 1), name
    a = dalle2.load(source)("a red circle", n=1, seed=2)[0]
    b = dalle2.load(tmp_path / "out")("a red circle", n=1, seed=2)[0]
    assert np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean() < 2.0  # float16 rounding only
