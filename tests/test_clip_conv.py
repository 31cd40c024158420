"""The CLIP's convolutional image tower (``clip.vision_arch=conv``), ``clip.image_size``, and that ViT folders
written before it load as before."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dalle2.data.base import pil_to_tensor
from dalle2.data.shapes import SHAPES, Obj, Scene, ShapesDataset, render
from dalle2.eval.networks import ConvNet
from dalle2.models.clip import ClipError, ClipModel, ConvImageTower, clip_preset
from dalle2.text import Tokenizer

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "dalle2" / "assets" / "models"
FIXTURE = Path(__file__).parent / "fixtures" / "unclip-tiny"
CAPTIONS = [f"a red {s}" for s in SHAPES]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(
        CAPTIONS * 20 + ["two blue squares on a black background"] * 20, vocab_size=300, max_length=16
    )


def conv_clip(tokenizer: Tokenizer, image_size: int, preset: str = "tiny", **updates) -> ClipModel:
    torch.manual_seed(0)
    config = clip_preset(preset, {"vision_arch": "conv", **updates})
    return ClipModel.from_config(config, image_size=image_size, tokenizer=tokenizer)


@pytest.mark.parametrize(
    ("image_size", "updates", "grid"),
    [
        (32, {}, 4),  # the default [16, 32, 64, 128]: three halvings
        (64, {}, 8),
        (64, {"conv_stem_stride": 2}, 4),  # the 64x64 render at the cost of a 32x32 one
        (32, {"conv_pool": "mean"}, 4),
        (32, {"conv_norm": "batch", "conv_downsample": "avgpool"}, 4),  # CLIP's ResNet's choices
    ],
)
def test_conv_tower_shapes_at_32_and_64(tokenizer, image_size, updates, grid):
    model = conv_clip(tokenizer, image_size, preset="cpu", **updates)
    assert model.vision_arch == "conv" and model.image_size == image_size
    assert isinstance(model.vision, ConvImageTower) and model.vision.config.grid == grid
    images = torch.rand(3, 3, image_size, image_size) * 2 - 1
    with torch.no_grad():
        features = model.vision.blocks(model.vision.stem(images))
        embeds = model.encode_image(images)
    assert features.shape == (3, 128, grid, grid)
    assert embeds.shape == (3, 128) and torch.allclose(embeds.norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(ClipError, match=f"takes {image_size}x{image_size}"):
        model.encode_image(torch.zeros(1, 3, image_size // 2, image_size // 2))


def test_conv_tower_is_not_the_evaluator_network(tokenizer):
    """FD and CLIP score stay independent of the generator's CLIP: not the evaluator tower's design (VGG stages of
    conv + BatchNorm + ReLU + max-pooling, global average pooling) but residual blocks with SiLU and attention
    pooling, with GroupNorm or (the cpu preset's, as CLIP's ResNets) BatchNorm."""
    tower = conv_clip(tokenizer, 32, preset="cpu", conv_norm="group", conv_downsample="stride").vision
    kinds = {type(m) for m in tower.modules()}
    assert not isinstance(tower, ConvNet)
    assert not kinds & {torch.nn.BatchNorm2d, torch.nn.MaxPool2d, torch.nn.ReLU}
    assert torch.nn.GroupNorm in kinds and type(tower.pool).__name__ == "_AttentionPool"
    assert sum(type(m).__name__ == "_ResBlock" for m in tower.modules()) == 4
    # the cpu preset's, with CLIP ResNet's BatchNorm and the original ResNet's max-pool downsampling (average
    # pooling or strided convs as options), is still no VGG: residual blocks, SiLU, attention pooling, no ReLU
    for updates, pool in (({}, torch.nn.MaxPool2d), ({"conv_downsample": "avgpool"}, torch.nn.AvgPool2d)):
        tower = conv_clip(tokenizer, 32, preset="cpu", **updates).vision
        kinds = {type(m) for m in tower.modules()}
        assert torch.nn.BatchNorm2d in kinds and torch.nn.GroupNorm not in kinds and pool in kinds
        assert sum(type(m).__name__ == "_ResBlock" for m in tower.modules()) == 4
        assert torch.nn.ReLU not in kinds and type(tower.pool).__name__ == "_AttentionPool"


@pytest.mark.parametrize(
    ("downsample", "pool", "other", "module"),
    [
        ("avgpool", F.avg_pool2d, F.max_pool2d, torch.nn.AvgPool2d),
        ("maxpool", F.max_pool2d, F.avg_pool2d, torch.nn.MaxPool2d),
    ],
)
def test_pool_downsampling_pools_before_a_stride_1_conv(tokenizer, downsample, pool, other, module):
    """``clip.conv_downsample=avgpool`` / ``maxpool``: a downsampling block is the same block at stride 1 applied
    to the 2x2 average- or max-pooled map (its shortcut too), so a one-pixel object reaches the coarser map (at a
    quarter of its value, or whole) wherever it sits, where a stride-2 conv skips three pixel phases in four."""
    from dalle2.models.clip import _ResBlock

    torch.manual_seed(0)
    pooled = _ResBlock(8, 16, stride=2, norm="batch", downsample=downsample).eval()
    flat = _ResBlock(8, 16, stride=1, norm="batch").eval()
    flat.load_state_dict(pooled.state_dict())
    torch.nn.init.normal_(pooled.norm2.weight)  # not the zero init: the residual branch counts
    flat.norm2.weight.data.copy_(pooled.norm2.weight)
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        assert torch.allclose(pooled(x), flat(pool(x, 2)), atol=1e-6)
        assert not torch.allclose(pooled(x), flat(other(x, 2)), atol=1e-3)
        assert pooled(x).shape == (2, 16, 8, 8)
    tower = conv_clip(tokenizer, 32, preset="cpu", conv_downsample=downsample).vision
    assert sum(isinstance(m, module) for m in tower.modules()) == 3  # one per halving


def test_attention_pooling_is_multi_head_attention_from_the_mean_token(tokenizer):
    model = conv_clip(tokenizer, 16, conv_widths=[8, 16])  # tiny: 2 heads over 16 channels, an 8x8 grid
    pool = model.vision.pool
    torch.manual_seed(1)
    x = torch.randn(2, 16, 8, 8)
    tokens = torch.cat([x.mean((2, 3))[:, None], x.flatten(2).transpose(1, 2)], 1) + pool.position  # (2, 65, 16)
    q, k, v = pool.q_proj(tokens[:, :1]), pool.k_proj(tokens), pool.v_proj(tokens)
    heads = []
    for h in range(2):  # each head reads its own 8 channels
        s = slice(8 * h, 8 * h + 8)
        weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(8), dim=-1)  # (2, 1, 65)
        heads.append(weights @ v[..., s])  # (2, 1, 8)
    expected = pool.c_proj(torch.cat(heads, -1)[:, 0])
    with torch.no_grad():
        assert torch.allclose(pool(x), expected, atol=1e-5)
        # the learned positions make it see where a feature is; mean pooling cannot
        moved = x.roll(3, dims=3)
        assert not torch.allclose(pool(x), pool(moved), atol=1e-3)
        mean_model = conv_clip(tokenizer, 16, conv_widths=[8, 16], conv_pool="mean")
        assert torch.allclose(
            mean_model.vision.pool(x.mean((2, 3))), mean_model.vision.pool(moved.mean((2, 3))), atol=1e-5
        )


def _one_object(shape: str, resolution: int) -> torch.Tensor:
    return pil_to_tensor(render(Scene("single", "black", (Obj(shape, "red", "large", "center"),)), resolution))


@pytest.mark.parametrize("updates", [{}, {"conv_norm": "batch", "conv_downsample": "maxpool"}])  # tiny, cpu's
def test_conv_clip_learns_to_tell_shapes_of_one_colour(tokenizer, updates):
    """Six red shapes in the same place, only the shape tells the captions apart: the conv tower must see it."""
    model = conv_clip(tokenizer, 16, **updates)
    images = torch.stack([_one_object(s, 16) for s in SHAPES])
    ids, mask = model.tokenize(CAPTIONS)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(40):
        loss = model(images, ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    with torch.no_grad():
        sim = model.encode_image(images) @ model.encode_text(ids, mask)[0].t()  # (images, captions)
    assert torch.equal(sim.argmax(1), torch.arange(len(SHAPES)))


def test_conv_config_round_trips_through_the_folder(tmp_path, tokenizer):
    model = conv_clip(tokenizer, 32, conv_widths=[8, 16, 32], conv_blocks=2, conv_stem_stride=2).eval()
    folder = model.save(tmp_path / "clip")
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_arch"] == "conv"
    assert config["vision_config"] == {
        "image_size": 32,
        "widths": [8, 16, 32],
        "blocks": 2,
        "stem_stride": 2,
        "pool": "attention",
        "heads": 2,
        "projection_dim": 32,
        "num_channels": 3,
        "norm": "group",
        "downsample": "stride",
    }
    assert config["clip"]["conv_widths"] == [8, 16, 32] and config["clip"]["vision_arch"] == "conv"
    again = ClipModel.load(folder, tokenizer=tokenizer)
    assert again.vision_arch == "conv" and again.image_size == 32 and again.config == model.config
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again.encode_image(images), model.encode_image(images))
    disk = load_file(folder / "model.safetensors")
    assert any(k.startswith("vision.pool.") for k in disk)
    assert all(torch.equal(again.state_dict()[k], disk[k]) for k in disk)
    again.save(tmp_path / "clip2")
    assert (tmp_path / "clip2" / "config.json").read_text() == (folder / "config.json").read_text()


@pytest.mark.parametrize(
    "folder", [BUNDLED / "gan-shapes" / "clip", FIXTURE / "clip"]
)  # unclip-shapes: conv since 12-04
def test_vit_folders_without_vision_arch_load_unchanged(folder):
    """Folders written before the conv tower have no ``vision_arch``: they build the transformers ViT from their
    ``vision_config`` and their weights give the same embeddings as that ViT loaded directly."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = json.loads((folder / "config.json").read_text())
    assert "vision_arch" not in config
    model = ClipModel.load(folder)
    assert model.vision_arch == "vit" and model.image_size == config["vision_config"]["image_size"]
    reference = CLIPVisionModelWithProjection(CLIPVisionConfig(**config["vision_config"])).eval()
    weights = load_file(folder / "model.safetensors")
    reference.load_state_dict(
        {k.removeprefix("vision."): v.float() for k, v in weights.items() if k.startswith("vision.")}
    )
    size = model.image_size
    images = torch.stack([pil_to_tensor(render(ShapesDataset("test", size).scene(i)[0], size)) for i in range(4)])
    with torch.no_grad():
        expected = F.normalize(reference(pixel_values=images).image_embeds.float(), dim=-1)
        assert torch.allclose(model.encode_image(images), expected, atol=1e-5)


def test_bundled_clip_still_names_the_colour():
    """The bundled ViT CLIP loaded through the new code keeps its measured behaviour (report.json: colour 1.0)."""
    from dalle2.stages.zero_shot import attribute_accuracy

    model = ClipModel.load(BUNDLED / "unclip-shapes" / "clip")
    data = ShapesDataset("test", 32, length=60)
    items = [data[i] for i in range(len(data)) if data.scene(i)[0].kind == "single"]
    with torch.no_grad():
        embeds = model.encode_image(torch.stack([s["image"] for s in items]))
        result = attribute_accuracy(embeds, [s["meta"] for s in items], lambda p: model.encode_prompts(p)[0])
    assert result["images"] == len(items) >= 15 and result["color_accuracy"] >= 0.9


def test_image_size_key_sets_the_tower_resolution(tokenizer):
    for arch in ("vit", "conv"):
        config = clip_preset("tiny", {"vision_arch": arch, "image_size": 32})
        model = ClipModel.from_config(config, image_size=16, tokenizer=tokenizer)  # 16: the data resolution
        assert model.image_size == 32
        assert model.encode_image(torch.zeros(1, 3, 32, 32)).shape == (1, 32)


def test_bad_conv_options(tmp_path, tokenizer):
    with pytest.raises(ClipError, match="vision_arch must be one of vit, conv"):
        clip_preset("tiny", {"vision_arch": "resnet"})
    with pytest.raises(ClipError, match="conv_widths must be list of int"):
        clip_preset("tiny", {"conv_widths": 8})
    with pytest.raises(ClipError, match="conv_pool must be one of"):
        clip_preset("tiny", {"conv_pool": "max"})
    with pytest.raises(ClipError, match=re.escape("conv_widths[-1] must be divisible by clip.vision_heads")):
        clip_preset("tiny", {"vision_arch": "conv", "conv_widths": [8, 15]})
    with pytest.raises(ClipError, match="conv_norm must be one of group, batch"):
        clip_preset("tiny", {"conv_norm": "layer"})
    with pytest.raises(ClipError, match="conv_downsample must be one of stride, avgpool, maxpool"):
        clip_preset("tiny", {"conv_downsample": "blur"})
    with pytest.raises(ClipError, match="image_size must be 0"):
        clip_preset("tiny", {"image_size": 4})
    with pytest.raises(ClipError, match="downsamples by 8"):  # stem stride 2, then two halvings: 20 / 8
        conv_clip(tokenizer, 20, conv_widths=[8, 16, 32], conv_stem_stride=2)
    assert clip_preset("tiny", {"hard_negatives": False}).hard_negatives is False  # bools can be set
    assert clip_preset("tiny", {"init_temperature": 0.5}).init_temperature == 0.5
    assert clip_preset("tiny", {"conv_widths": (4, 8)}).conv_widths == [4, 8]
    assert clip_preset("tiny").conv_widths is not clip_preset("tiny").conv_widths  # presets are not shared

    model = conv_clip(tokenizer, 16)
    folder = model.save(tmp_path / "clip")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vision_arch": "capsule"}))
    with pytest.raises(ClipError, match="config.json: unknown CLIP vision_arch 'capsule'"):
        ClipModel.load(folder, tokenizer=tokenizer)
    (folder / "config.json").write_text(
        json.dumps({**config, "vision_config": {**config["vision_config"], "depth": 3}})
    )
    with pytest.raises(ClipError, match="invalid conv vision_config"):
        ClipModel.load(folder, tokenizer=tokenizer)


def test_a_batchnorm_tower_loads_frozen_and_encodes_each_image_alone(tmp_path, tokenizer):
    """The stages and pipelines encode z_i with a loaded CLIP: with BatchNorm it must use its running statistics
    (eval mode), so an image's embedding does not depend on the batch it came in."""
    from dalle2.stages.common import load_frozen_clip

    model = conv_clip(tokenizer, 16, conv_norm="batch")
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    model.train()
    with torch.no_grad():
        model.encode_image(images)  # moves the running statistics away from their start
    model.save(tmp_path / "clip")
    model.tokenizer.save(tmp_path / "tokenizer")
    loaded = load_frozen_clip(tmp_path, "decoder", ClipError)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        together, alone = loaded.encode_image(images), loaded.encode_image(images[:1])
    assert torch.allclose(together[:1], alone, atol=1e-5)
    norms = [m for m in loaded.vision.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not torch.equal(norms[0].running_mean, torch.zeros_like(norms[0].running_mean))
