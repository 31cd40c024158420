"""dalle2.folder_format: the one saved-folder format (component header, model_index.json, atomic writes).

Round trips of every component kind, the older header schemes still loading, the bundled models and
evaluators loading, one-line FolderErrors naming the file, atomicity under a failure mid-write, merging
into model_index.json, and the layering rule (models/ never imports training, stages, pipeline, eval, CLI).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dalle2 import folder_format as ff
from dalle2.folder_format import FolderError, MissingFileError

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "dalle2"
FIXTURE = Path(__file__).parent / "fixtures" / "unclip-tiny"
MODELS = SRC / "assets" / "models"
EVALUATORS = SRC / "assets" / "evaluators"
HEADER_KEYS = ("format", "format_version", "class")


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def _header(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return {k: config.get(k) for k in HEADER_KEYS}


# -- round trips of every component kind -------------------------------------------------------------


def _decoder():
    from dalle2.models.decoder import DiffusionConfig, ImageDiffusion

    torch.manual_seed(0)
    net = {"image_size": 16, "embed_dim": 8, "context_dim": 12, "width": 32, "depth": 1, "heads": 2, "patch_size": 4}
    return ImageDiffusion(DiffusionConfig(net=net, sample_steps=3)).eval()


def test_decoder_round_trip(tmp_path):
    from dalle2.models.decoder import ImageDiffusion

    model = _decoder()
    folder = model.save_pretrained(tmp_path / "decoder")
    assert _header(folder) == {"format": "dalle2-component", "format_version": 1, "class": "ImageDiffusion"}
    loaded = ImageDiffusion.from_pretrained(folder)
    _same_weights(model, loaded)
    assert loaded.config == model.config


def test_prior_round_trip(tmp_path):
    from dalle2.models.prior import DiffusionPrior

    prior = DiffusionPrior.from_pretrained(FIXTURE / "prior")
    prior.save_pretrained(tmp_path / "prior")
    assert _header(tmp_path / "prior")["class"] == "DiffusionPrior"
    assert (tmp_path / "prior" / "embedding_stats.safetensors").is_file()
    loaded = DiffusionPrior.from_pretrained(tmp_path / "prior")
    _same_weights(prior, loaded)
    assert torch.equal(loaded.stats.mean, prior.stats.mean) and torch.equal(loaded.stats.std, prior.stats.std)
    assert loaded.config == prior.config


def test_clip_round_trip(tmp_path):
    from dalle2.models.clip import ClipModel

    clip = ClipModel.load(FIXTURE / "clip")
    assert "model" not in clip.config and "config_version" not in clip.config  # the old header is not config
    shutil.copytree(FIXTURE / "tokenizer", tmp_path / "tokenizer")  # a trained CLIP reads ../tokenizer
    clip.save(tmp_path / "clip")
    saved = json.loads((tmp_path / "clip" / "config.json").read_text())
    assert _header(tmp_path / "clip")["class"] == "ClipModel"
    assert {k: v for k, v in saved.items() if k not in HEADER_KEYS} == clip.config
    loaded = ClipModel.load(tmp_path / "clip")
    _same_weights(clip, loaded)


def test_gan_generator_round_trip(tmp_path):
    from dalle2.models.gan import GanConfig, Generator

    torch.manual_seed(1)
    g = Generator(GanConfig(image_size=16, embed_dim=8, z_dim=8, g_width=4)).eval()
    g.save_pretrained(tmp_path / "gan")
    assert _header(tmp_path / "gan")["class"] == "Generator"
    loaded = Generator.from_pretrained(tmp_path / "gan")
    _same_weights(g, loaded)
    assert loaded.config == g.config


def test_evaluator_round_trip(tmp_path):
    from dalle2.eval.networks import ConvNet, ConvNetConfig, load_evaluator, save_evaluator

    model = ConvNet(ConvNetConfig(widths=(8,), feature_dim=4, heads={"class": 3})).eval()
    save_evaluator(model, tmp_path / "m", {"name": "m", "classes": ["a", "b", "c"]})
    assert _header(tmp_path / "m")["class"] == "ConvNet"
    loaded, meta = load_evaluator(tmp_path / "m")
    _same_weights(model, loaded)
    assert meta["architecture"] == "ConvNet" and meta["name"] == "m" and meta["classes"] == ["a", "b", "c"]


def test_save_component_from_a_state_dict(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "steps": torch.tensor([3])}
    ff.save_component(tmp_path / "c", tensors, {"hidden": 3}, "Toy")
    assert ff.load_component_config(tmp_path / "c", "Toy") == {"hidden": 3}
    loaded = ff.load_tensors(tmp_path / "c")
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with pytest.raises(ValueError, match="header"):
        ff.save_component(tmp_path / "d", tensors, {"class": "Other"}, "Toy")


def test_tokenizer_save_is_atomic_and_round_trips(tmp_path):
    from dalle2.text import Tokenizer

    tok = Tokenizer.load(FIXTURE / "tokenizer")
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temporary file left
    assert Tokenizer.load(path).encode("a red circle")[0].tolist() == tok.encode("a red circle")[0].tolist()


# -- the older header schemes ------------------------------------------------------------------------


def _write_old(folder: Path, config: dict, module: nn.Module) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))


def test_old_format_version_class_header_loads(tmp_path):
    """decoder / upsampler / prior before the common header: {"format_version": 1, "class": ...}."""
    from dalle2.models.decoder import ImageDiffusion

    model = _decoder()
    _write_old(tmp_path / "d", {"format_version": 1, "class": "ImageDiffusion", **model.config.to_dict()}, model)
    _same_weights(model, ImageDiffusion.from_pretrained(tmp_path / "d"))
    assert ff.read_component_config(tmp_path / "d")[0] == "ImageDiffusion"


def test_old_model_config_version_header_loads(tmp_path):
    """CLIP / GAN generator before the common header: {"model": ..., "config_version": 1}."""
    from dalle2.models.gan import GanConfig, Generator

    g = Generator(GanConfig(image_size=16, embed_dim=8, z_dim=8, g_width=4)).eval()
    config = {"model": "gan-generator", "config_version": 1, **g.config.to_dict()}
    _write_old(tmp_path / "gan", config, g)
    _same_weights(g, Generator.from_pretrained(tmp_path / "gan"))
    assert ff.read_component_config(tmp_path / "gan") == ("Generator", g.config.to_dict())
    clip_config = json.loads((FIXTURE / "clip" / "config.json").read_text())
    assert clip_config["model"] == "clip" and clip_config["config_version"] == 1  # the fixture is the old scheme
    assert ff.read_component_config(FIXTURE / "clip")[0] == "ClipModel"


def test_old_evaluator_header_loads(tmp_path):
    from dalle2.eval.networks import ConvNet, ConvNetConfig, load_evaluator

    model = ConvNet(ConvNetConfig(widths=(8,), feature_dim=4, heads={"class": 3})).eval()
    cfg = {"in_channels": 3, "resolution": 32, "widths": [8], "feature_dim": 4, "heads": {"class": 3}}
    old = {"format": "dalle2-evaluator", "format_version": 1, "architecture": "ConvNet", "name": "m", "config": cfg}
    _write_old(tmp_path / "m", old, model)
    loaded, meta = load_evaluator(tmp_path / "m")
    _same_weights(model, loaded)
    assert meta["architecture"] == "ConvNet" and meta["format_version"] == 1 and meta["name"] == "m"


def test_every_shipped_config_is_read():
    configs = sorted(MODELS.glob("*/*/config.json")) + sorted(EVALUATORS.glob("*/config.json"))
    assert len(configs) >= 9
    for config in configs:
        cls_name, body = ff.read_component_config(config.parent)
        assert cls_name in {"ClipModel", "DiffusionPrior", "ImageDiffusion", "Generator", "ConvNet", "EvalCLIP"}
        assert not set(body) & {"format", "format_version", "class", "model", "config_version", "architecture"}
    for index in MODELS.glob("*/model_index.json"):
        assert ff.read_model_index(index.parent)["format"] == "dalle2"


# -- the bundled models load --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unclip", "gan"])
def test_bundled_models_load(name):
    import dalle2

    pipe = dalle2.load(name)
    assert pipe.resolution > 0


@pytest.mark.parametrize("name", sorted(p.name for p in EVALUATORS.iterdir() if (p / "config.json").is_file()))
def test_shipped_evaluators_load(name):
    from dalle2.eval.networks import load_evaluator

    model, meta = load_evaluator(name)
    assert meta["architecture"] == type(model).__name__


# -- errors: one line naming the file -----------------------------------------------------------------


@pytest.fixture
def component(tmp_path) -> Path:
    folder = tmp_path / "decoder"
    _decoder().save_pretrained(folder)
    return folder


def _one_line(error: pytest.ExceptionInfo, name: str) -> None:
    message = str(error.value)
    assert "\n" not in message and name in message, message


def test_missing_files(component, tmp_path):
    from dalle2.models.decoder import ImageDiffusion

    (component / "model.safetensors").unlink()
    with pytest.raises(MissingFileError) as error:
        ImageDiffusion.from_pretrained(component)
    _one_line(error, str(component / "model.safetensors"))
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, ValueError)
    (component / "config.json").unlink()
    with pytest.raises(MissingFileError) as error:
        ff.load_component_config(component, "ImageDiffusion")
    _one_line(error, str(component / "config.json"))
    with pytest.raises(MissingFileError, match="model folder not found"):
        ff.read_model_index(tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match="no model_index.json"):
        ff.read_model_index(tmp_path)


def test_corrupt_json(component):
    (component / "config.json").write_text('{"format": "dalle2-component",')
    with pytest.raises(FolderError, match="not valid JSON") as error:
        ff.load_component_config(component, "ImageDiffusion")
    _one_line(error, str(component / "config.json"))
    (component / "config.json").write_text("[1, 2]")
    with pytest.raises(FolderError, match="not a component config") as error:
        ff.load_component_config(component, "ImageDiffusion")


def test_corrupt_weights(component):
    from dalle2.models.decoder import ImageDiffusion

    (component / "model.safetensors").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(FolderError, match="not a readable safetensors file") as error:
        ImageDiffusion.from_pretrained(component)
    _one_line(error, str(component / "model.safetensors"))
    with pytest.raises(FolderError, match="not a readable safetensors file"):
        ff.load_tensors(component)


def test_wrong_class(component):
    from dalle2.models.gan import Generator
    from dalle2.models.prior import DiffusionPrior

    with pytest.raises(FolderError, match="holds a ImageDiffusion, not a Generator") as error:
        Generator.from_pretrained(component)
    _one_line(error, str(component / "config.json"))
    (component / "embedding_stats.safetensors").write_bytes(b"")  # so the class check is what fails
    with pytest.raises(FolderError, match="not a DiffusionPrior"):
        DiffusionPrior.from_pretrained(component)


def test_newer_and_unknown_versions(component, tmp_path):
    config = json.loads((component / "config.json").read_text())
    (component / "config.json").write_text(json.dumps({**config, "format_version": 2}))
    with pytest.raises(FolderError, match="format version 2; this dalle2 reads version 1") as error:
        ff.load_component_config(component, "ImageDiffusion")
    _one_line(error, str(component / "config.json"))
    (component / "config.json").write_text(json.dumps({**config, "format": "someone-else"}))
    with pytest.raises(FolderError, match="format 'someone-else' is not 'dalle2-component'"):
        ff.load_component_config(component, "ImageDiffusion")
    body = {k: v for k, v in config.items() if k not in HEADER_KEYS}
    (component / "config.json").write_text(json.dumps(body))
    with pytest.raises(FolderError, match="no component header"):
        ff.load_component_config(component, "ImageDiffusion")
    ff.write_model_index(tmp_path, {"kind": "unclip"})
    index = json.loads((tmp_path / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "format_version": 2}))
    with pytest.raises(FolderError, match="format version 2; this dalle2 reads version 1") as error:
        ff.read_model_index(tmp_path)
    _one_line(error, str(tmp_path / "model_index.json"))


def test_weights_of_another_config(component):
    from dalle2.models.decoder import ImageDiffusion

    config = json.loads((component / "config.json").read_text())
    config["net"]["width"] = 48
    (component / "config.json").write_text(json.dumps(config))
    with pytest.raises(FolderError, match=r"model\.safetensors does not match config\.json \(size mismatch") as err:
        ImageDiffusion.from_pretrained(component)
    _one_line(err, str(component / "model.safetensors"))


def test_pipeline_read_index_keeps_its_error_type(tmp_path):
    from dalle2.pipeline import PipelineError, read_index

    (tmp_path / "model_index.json").write_text("{oops")
    with pytest.raises(PipelineError, match="model_index.json: not valid JSON"):
        read_index(tmp_path)
    assert read_index(FIXTURE)["kind"] == "unclip"


# -- atomicity ----------------------------------------------------------------------------------------


def _failing_replace(monkeypatch):
    def fail(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ff.os, "replace", fail)


def test_failed_json_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    ff.write_json_atomic(path, {"v": 1})
    _failing_replace(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        ff.write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # the temporary file is cleaned up


def test_failed_tensor_write_keeps_the_old_weights(component, monkeypatch):
    from dalle2.models.decoder import ImageDiffusion

    before = (component / "model.safetensors").read_bytes()
    config_before = (component / "config.json").read_text()
    import safetensors.torch

    def crash(*args, **kwargs):
        Path(args[1]).write_bytes(b"half a file")  # a partial write into the temporary file, then a crash
        raise RuntimeError("killed mid-write (simulated)")

    monkeypatch.setattr(safetensors.torch, "save_model", crash)
    other = _decoder()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(RuntimeError, match="simulated"):
        other.save_pretrained(component)
    assert (component / "model.safetensors").read_bytes() == before
    assert (component / "config.json").read_text() == config_before
    assert sorted(p.name for p in component.iterdir()) == ["config.json", "model.safetensors"]
    ImageDiffusion.from_pretrained(component)  # still loads


def test_failed_folder_build_keeps_the_old_folder(tmp_path):
    dest = tmp_path / "out"
    ff.write_folder_atomic(dest, lambda tmp: (tmp / "a.txt").write_text("old"))

    def fill(tmp: Path) -> None:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("failed half way (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        ff.write_folder_atomic(dest, fill)
    assert (dest / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary sibling left
    ff.write_folder_atomic(dest, lambda tmp: (tmp / "b.txt").write_text("new"))
    assert [p.name for p in dest.iterdir()] == ["b.txt"]  # replaced as a whole
    assert os.stat(dest).st_mode & 0o777 != 0o700  # not mkdtemp's private mode


def test_copy_folder_atomic(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.json").write_text("{}")
    (src / "report.json").write_text("{}")
    ff.copy_folder_atomic(src, tmp_path / "dst", ignore=shutil.ignore_patterns("report.json"))
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["keep.json"]


def test_failed_export_leaves_no_partial_folder(tmp_path, monkeypatch):
    from dalle2 import export

    def crash(*args, **kwargs):
        raise RuntimeError("killed (simulated)")

    monkeypatch.setattr(export, "write_tensors_atomic", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        export.export_pipeline(FIXTURE, tmp_path / "exported")
    assert list(tmp_path.iterdir()) == []


# -- model_index.json ----------------------------------------------------------------------------------


def test_update_model_index_keeps_other_components(tmp_path):
    ff.update_model_index(tmp_path, "clip", {"folder": "clip"}, kind="unclip", defaults={"dataset": "shapes"})
    ff.update_model_index(tmp_path, "prior", {"folder": "prior"}, kind="unclip", defaults={"dataset": "other"})
    index = ff.update_model_index(tmp_path, "decoder", {"folder": "decoder"}, kind="unclip", resolutions=[16])
    assert index == ff.read_model_index(tmp_path)
    assert index["format"] == "dalle2" and index["format_version"] == 1 and index["kind"] == "unclip"
    assert list(index["components"]) == ["clip", "prior", "decoder"]
    assert index["dataset"] == "shapes"  # defaults never replace a value
    assert index["resolutions"] == [16]
    index = ff.update_model_index(tmp_path, "clip", {"folder": "clip", "embed_dim": 8}, kind="unclip")
    assert index["components"]["clip"] == {"folder": "clip", "embed_dim": 8}
    assert list(index["components"]) == ["clip", "prior", "decoder"]


def test_update_model_index_refuses_another_kind_or_a_corrupt_index(tmp_path):
    ff.write_model_index(tmp_path, {"kind": "gan", "components": {"gan": {"folder": "gan"}}})
    with pytest.raises(FolderError, match="kind 'gan'"):
        ff.update_model_index(tmp_path, "prior", {"folder": "prior"}, kind="unclip")
    (tmp_path / "model_index.json").write_text("{broken")
    with pytest.raises(FolderError, match="not valid JSON"):
        ff.update_model_index(tmp_path, "prior", {"folder": "prior"}, kind="unclip")
    assert (tmp_path / "model_index.json").read_text() == "{broken"  # never overwritten


def test_write_model_index_puts_the_header_first(tmp_path):
    ff.write_model_index(tmp_path, {"kind": "gan", "format_version": 7})
    assert list(json.loads((tmp_path / "model_index.json").read_text()).items())[:3] == [
        ("format", "dalle2"),
        ("format_version", 1),
        ("kind", "gan"),
    ]


# -- layering -----------------------------------------------------------------------------------------


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_folder_format_imports_nothing_else_from_dalle2():
    names = [n for n in _imports(SRC / "folder_format.py") if n == "dalle2" or n.startswith("dalle2.")]
    assert all(n.startswith(("dalle2.presets", "dalle2.errors")) for n in names), names  # the ground layer only
