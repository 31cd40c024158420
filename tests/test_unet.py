"""The decoder / upsampler networks: shapes over several configurations, and clear config errors."""

from __future__ import annotations

import pytest
import torch

from dalle2.models.transformer import DiffusionTransformer, TransformerConfig
from dalle2.models.unet import UNet, UNetConfig


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-initialise every parameter with noise, so the zero-initialised output layers do not make the
    network trivially answer zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()


UNET_CONFIGS = [
    {"image_size": 16, "channels": [16, 32], "attention": [False, True], "head_dim": 8},
    {"image_size": 16, "channels": [8, 16, 24], "attention": [False, False, True], "blocks_per_level": 2},
    {"image_size": 8, "channels": [16], "attention": [True], "head_dim": 8, "embed_dim": 6, "context_dim": 10},
    {"image_size": 16, "channels": [16, 32], "attention": [False, True], "embed_dim": 6, "num_image_tokens": 2},
    {"image_size": 16, "in_channels": 1, "out_channels": 1, "channels": [16, 16], "attention": [False, False]},
    {"image_size": 16, "channels": [16, 32], "attention": [False, True], "embed_dim": 6, "patch_size": 2},
    {"image_size": 16, "channels": [16], "attention": [False], "low_res_channels": 3, "patch_size": 4},
    {
        "image_size": 16,
        "channels": [8, 16, 24],
        "attention": [False, True, True],
        "embed_dim": 6,
        "context_dim": 10,
        "attention_positions": True,
        "patch_size": 2,
    },
]


def _unet_inputs(c: UNetConfig, b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    kw: dict[str, torch.Tensor] = {
        "x": torch.randn(b, c.in_channels, c.image_size, c.image_size, generator=g),
        "t": torch.tensor([3, 700])[:b],
    }
    if c.embed_dim:
        kw["image_embed"] = torch.randn(b, c.embed_dim, generator=g)
    if c.context_dim:
        kw["text_tokens"] = torch.randn(b, 5, c.context_dim, generator=g)
        kw["text_mask"] = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)[:b]
    if c.low_res_channels:
        kw["low_res"] = torch.randn(b, c.low_res_channels, c.image_size // 2, c.image_size // 2, generator=g)
    if c.noise_level_embedding:
        kw["noise_level"] = torch.tensor([0, 200])[:b]
    return kw


@pytest.mark.parametrize("spec", UNET_CONFIGS)
def test_unet_output_shape_equals_input(spec):
    c = UNetConfig(**spec)
    net = _randomize(UNet(c))
    kw = _unet_inputs(c)
    with torch.no_grad():
        out = net(kw.pop("x"), kw.pop("t"), **kw)
    assert out.shape == (2, c.out_channels, c.image_size, c.image_size)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_unet_patch_size_is_space_to_depth():
    """patch_size 2 runs the levels at half resolution: a pixel only mixes with its own 2x2 block at conv_in."""
    c = UNetConfig(image_size=16, channels=[16], attention=[False], patch_size=2)
    net = _randomize(UNet(c))
    assert net.conv_in.in_channels == 12 and net.conv_out.out_channels == 12
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    net(x, torch.tensor([3]))[0, :, 0, 0].sum().backward()
    assert x.grad[0, :, :2, :2].abs().sum() > 0  # its own block reaches output pixel (0, 0)


def test_attention_positions_start_at_zero_and_learn_where_pixels_are():
    """``attention_positions``: one (H*W, C) embedding per attention block at its level's resolution, zero at
    the start (the network computes what the one without them computes, on the same other weights), and
    trainable; off, the state dict is the one networks saved before the option existed."""
    spec = {"image_size": 32, "channels": [8, 16, 24], "attention": [False, True, True], "head_dim": 8,
            "embed_dim": 6, "context_dim": 10}  # fmt: skip
    plain = _randomize(UNet(UNetConfig(**spec)))
    placed = UNet(UNetConfig(**spec, attention_positions=True)).eval()
    new = sorted(set(placed.state_dict()) - set(plain.state_dict()))
    assert new and all(k.endswith(".pos") for k in new)
    assert not any(k.endswith(".pos") for k in plain.state_dict())
    sizes = {k: tuple(v.shape) for k, v in placed.state_dict().items() if k.endswith(".pos")}
    assert sizes["down.1.attns.0.pos"] == (16 * 16, 16) and sizes["mid_attn.pos"] == (8 * 8, 24)
    assert sizes["up.0.attns.0.pos"] == (8 * 8, 24)  # the way up starts at the lowest level
    missing, unexpected = placed.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == new and not unexpected
    kw = _unet_inputs(placed.config)
    x, t = kw.pop("x"), kw.pop("t")
    with torch.no_grad():
        assert torch.equal(placed(x, t, **kw), plain(x, t, **kw))  # zero positions change nothing
    placed.train()
    placed(x, t, **kw).square().mean().backward()
    assert all(placed.get_parameter(k).grad.abs().sum() > 0 for k in new)
    with torch.no_grad():
        placed.get_parameter("mid_attn.pos").normal_()
        assert not torch.equal(placed.eval()(x, t, **kw), plain(x, t, **kw))


def test_unet_fresh_output_is_zero():
    """The output convolution starts at zero (the network predicts 0 before training)."""
    c = UNetConfig(**UNET_CONFIGS[0])
    kw = _unet_inputs(c)
    out = UNet(c)(kw.pop("x"), kw.pop("t"))
    assert torch.equal(out, torch.zeros_like(out))


def test_upsampler_unet_takes_low_res_and_noise_level():
    c = UNetConfig(
        image_size=16, channels=[16, 32], attention=[False, False], low_res_channels=3, noise_level_embedding=True
    )
    net = _randomize(UNet(c))
    kw = _unet_inputs(c)
    x, t = kw.pop("x"), kw.pop("t")
    with torch.no_grad():
        out = net(x, t, **kw)
        assert out.shape == x.shape
        other_low = net(x, t, low_res=kw["low_res"] + 1.0, noise_level=kw["noise_level"])
        other_level = net(x, t, low_res=kw["low_res"], noise_level=kw["noise_level"] + 100)
    assert not torch.allclose(out, other_low)  # the low-resolution image is an input
    assert not torch.allclose(out, other_level)  # and so is its augmentation level
    with pytest.raises(ValueError, match="needs low_res"):
        net(x, t, noise_level=kw["noise_level"])
    with pytest.raises(ValueError, match="needs noise_level"):
        net(x, t, low_res=kw["low_res"])


def test_unet_missing_conditions_are_clear_errors():
    c = UNetConfig(image_size=8, channels=[16], attention=[True], head_dim=8, embed_dim=6, context_dim=10)
    net = UNet(c)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([5])
    with pytest.raises(ValueError, match="needs image_embed"):
        net(x, t, text_tokens=torch.randn(1, 2, 10))
    with pytest.raises(ValueError, match="needs text_tokens"):
        net(x, t, image_embed=torch.randn(1, 6))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"channels": [16, 20]}, "channels must be multiples of 8"),
        ({"channels": [4], "attention": [False]}, "channels must be multiples of 8"),
        ({"channels": []}, "channels must be multiples of 8"),
        ({"channels": [16, 32], "attention": [False]}, "attention needs one flag per level"),
        ({"channels": [16, 32, 64], "attention": [False, True]}, "attention needs one flag per level"),
        ({"image_size": 10, "channels": [16, 32, 64], "attention": [False] * 3}, "must be divisible by 2"),
        ({"image_size": 32, "patch_size": 3, "channels": [16], "attention": [False]}, "patch_size must be >= 1"),
        ({"blocks_per_level": 0, "channels": [16], "attention": [False]}, "blocks_per_level must be >= 1"),
    ],
)
def test_unet_bad_configs(spec, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**spec)


def test_unet_config_from_dict():
    c = UNetConfig.from_dict({"image_size": 16, "channels": [16, 32], "attention": [0, 1]})
    assert c.attention == [False, True]
    assert UNetConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match=r"unknown UNet config keys: \['bogus', 'widht'\]"):
        UNetConfig.from_dict({"widht": 3, "bogus": 1})


TRANSFORMER_CONFIGS = [
    {"image_size": 16, "patch_size": 4, "width": 32, "depth": 1, "heads": 2},
    {"image_size": 16, "patch_size": 2, "width": 24, "depth": 2, "heads": 3, "embed_dim": 6, "context_dim": 10},
    {"image_size": 8, "patch_size": 8, "width": 16, "depth": 1, "heads": 1, "embed_dim": 6, "num_image_tokens": 1},
    {"image_size": 12, "in_channels": 1, "out_channels": 1, "patch_size": 3, "width": 16, "depth": 1, "heads": 4},
]


@pytest.mark.parametrize("spec", TRANSFORMER_CONFIGS)
def test_transformer_output_shape_equals_input(spec):
    c = TransformerConfig(**spec)
    net = _randomize(DiffusionTransformer(c))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c.in_channels, c.image_size, c.image_size, generator=g)
    kw = {}
    if c.embed_dim:
        kw["image_embed"] = torch.randn(2, c.embed_dim, generator=g)
    if c.context_dim:
        kw["text_tokens"] = torch.randn(2, 4, c.context_dim, generator=g)
        kw["text_mask"] = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        out = net(x, torch.tensor([0, 999]), **kw)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_transformer_input_size_and_conditions_checked():
    c = TransformerConfig(image_size=16, patch_size=4, width=32, depth=1, heads=2, embed_dim=6, context_dim=10)
    net = DiffusionTransformer(c)
    with pytest.raises(ValueError, match="expected 16x16 input, got 8x8"):
        net(torch.randn(1, 3, 8, 8), torch.tensor([1]), image_embed=torch.randn(1, 6))
    with pytest.raises(ValueError, match="needs image_embed"):
        net(torch.randn(1, 3, 16, 16), torch.tensor([1]), text_tokens=torch.randn(1, 2, 10))
    with pytest.raises(ValueError, match="needs text_tokens"):
        net(torch.randn(1, 3, 16, 16), torch.tensor([1]), image_embed=torch.randn(1, 6))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"image_size": 16, "patch_size": 5}, "image_size 16 must be divisible by patch_size 5"),
        ({"image_size": 30, "patch_size": 4}, "image_size 30 must be divisible by patch_size 4"),
        ({"width": 30, "heads": 4}, "width 30 must be divisible by heads 4"),
        ({"depth": 0}, "depth must be >= 1"),
    ],
)
def test_transformer_bad_configs(spec, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**spec)


def test_transformer_config_from_dict():
    c = TransformerConfig.from_dict({"image_size": 16, "width": 32, "heads": 2})
    assert TransformerConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match=r"unknown transformer config keys: \['channels'\]"):
        TransformerConfig.from_dict({"channels": [16]})
