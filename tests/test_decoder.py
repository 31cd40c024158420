"""ImageDiffusion (decoder and upsampler): guidance semantics on every conditioning path, the training
loss's condition dropping, sampling (guided pass, upsampling, inpainting) and save / load errors."""

from __future__ import annotations

import json
import re

import pytest
import torch

from dalle2.models.decoder import DiffusionConfig, ImageDiffusion, blur

EMBED, WIDTH, SIZE = 8, 12, 16


def _net(arch: str) -> dict:
    net = {"image_size": SIZE, "embed_dim": EMBED, "context_dim": WIDTH}
    if arch == "transformer":
        return {**net, "width": 32, "depth": 2, "heads": 2, "patch_size": 4}
    return {**net, "channels": [16, 32], "attention": [False, True], "head_dim": 8}


def _decoder(arch: str = "transformer", randomize: bool = False, **over) -> ImageDiffusion:
    torch.manual_seed(0)
    model = ImageDiffusion(DiffusionConfig(arch=arch, net=_net(arch), sample_steps=3, **over)).eval()
    if randomize:  # the output layers start at zero: without this every output is 0 whatever the input
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _upsampler(**over) -> ImageDiffusion:
    torch.manual_seed(0)
    net = {
        "image_size": SIZE,
        "channels": [16, 32],
        "attention": [False, False],
        "low_res_channels": 3,
        "noise_level_embedding": True,
    }
    config = DiffusionConfig(role="upsampler", arch="unet", net=net, low_res_size=SIZE // 2, sample_steps=3, **over)
    return ImageDiffusion(config).eval()


def _cond(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return {
        "image_embed": torch.randn(b, EMBED, generator=g),
        "text_tokens": torch.randn(b, 5, WIDTH, generator=g),
        "text_mask": mask,
    }


def _run(model: ImageDiffusion, cond: dict[str, torch.Tensor], **flags: torch.Tensor) -> torch.Tensor:
    b = cond["image_embed"].shape[0]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(b, 3, SIZE, SIZE, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([10, 500, 900])[:b], **cond, **flags)


def _rows_differ(a: torch.Tensor, b: torch.Tensor) -> list[bool]:
    return [not torch.allclose(a[i], b[i], atol=1e-5) for i in range(a.shape[0])]


# -- guidance semantics --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["transformer", "unet"])
def test_drop_image_removes_image_embed_from_every_path(arch):
    model = _decoder(arch, randomize=True)
    cond = _cond(2)
    other = {**cond, "image_embed": torch.randn(2, EMBED) * 3}
    drop = {"drop_image": torch.tensor([True, False]), "drop_text": torch.tensor([False, False])}
    a, b = _run(model, cond, **drop), _run(model, other, **drop)
    assert _rows_differ(a, b) == [False, True]  # row 0 (dropped) ignores z_i entirely; row 1 uses it
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)
    # z_i enters twice (the adaptive norm's embedding and the extra context tokens): with either path
    # alone the output depends on z_i, and the drop still removes it
    for path in ("image_proj", "image_tokens"):
        single = _decoder(arch, randomize=True)
        with torch.no_grad():
            layer = getattr(single.net, "image_tokens" if path == "image_proj" else "image_proj")
            layer.weight.zero_()  # keep only `path`
        a, b = _run(single, cond, **drop), _run(single, other, **drop)
        assert _rows_differ(a, b) == [False, True], path


@pytest.mark.parametrize("arch", ["transformer", "unet"])
def test_drop_text_removes_caption(arch):
    model = _decoder(arch, randomize=True)
    cond = _cond(2)
    other = {**cond, "text_tokens": torch.randn(2, 5, WIDTH) * 3, "text_mask": torch.ones(2, 5, dtype=torch.bool)}
    drop = {"drop_image": torch.tensor([False, False]), "drop_text": torch.tensor([True, False])}
    a, b = _run(model, cond, **drop), _run(model, other, **drop)
    assert _rows_differ(a, b) == [False, True]
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)
    # padding is masked: changing only the padded caption positions of row 0 changes nothing
    padded = {**cond, "text_tokens": cond["text_tokens"].clone()}
    padded["text_tokens"][0, 3:] = 100.0
    no_drop = {"drop_image": torch.tensor([False, False]), "drop_text": torch.tensor([False, False])}
    torch.testing.assert_close(_run(model, cond, **no_drop), _run(model, padded, **no_drop), rtol=0, atol=1e-6)


def test_text_pool_path_follows_the_caption_and_its_drop():
    torch.manual_seed(0)
    net = {**_net("unet"), "text_pool": True}
    model = ImageDiffusion(DiffusionConfig(arch="unet", net=net, sample_steps=3)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        model.net.text_proj.weight.zero_()  # keep only the pooled path for the caption
        model.net.text_proj.bias.zero_()
    cond = _cond(2)
    final = cond["text_tokens"].clone()
    final[0, 2], final[1, 4] = final[0, 2] + 3, final[1, 4] + 3  # change only each caption's last real token
    earlier = cond["text_tokens"].clone()
    earlier[:, 0] += 3  # change a token that is not the last
    no_drop = {"drop_image": torch.tensor([False, False]), "drop_text": torch.tensor([False, False])}
    base = _run(model, cond, **no_drop)
    assert _rows_differ(base, _run(model, {**cond, "text_tokens": final}, **no_drop)) == [True, True]
    torch.testing.assert_close(base, _run(model, {**cond, "text_tokens": earlier}, **no_drop), rtol=0, atol=1e-6)
    drop = {"drop_image": torch.tensor([True, False]), "drop_text": torch.tensor([True, False])}
    a, b = _run(model, cond, **drop), _run(model, {**cond, "text_tokens": final}, **drop)
    assert _rows_differ(a, b) == [False, True]  # dropped: the pooled caption is gone too


@pytest.mark.parametrize("arch", ["transformer", "unet"])
def test_without_drop_every_condition_matters(arch):
    model = _decoder(arch, randomize=True)
    cond = _cond(3)
    base = _run(model, cond)
    assert all(_rows_differ(base, _run(model, {**cond, "image_embed": cond["image_embed"].roll(1, 0)})))
    assert all(_rows_differ(base, _run(model, {**cond, "text_tokens": cond["text_tokens"] + 1.0})))
    # both dropped: the output is the same for any condition (the unconditional model)
    both = {"drop_image": torch.ones(3, dtype=torch.bool), "drop_text": torch.ones(3, dtype=torch.bool)}
    other = _cond(3, seed=9)
    torch.testing.assert_close(_run(model, cond, **both), _run(model, other, **both), rtol=0, atol=1e-6)


def _caption_decoder(arch: str = "unet") -> ImageDiffusion:
    """A decoder with its own caption encoder (GLIDE's): ``text_tokens`` are token ids."""
    torch.manual_seed(0)
    net = {**_net(arch), "context_dim": 16, "caption_layers": 1, "caption_vocab": 30, "caption_length": 5}
    if arch == "unet":
        net["text_pool"] = True
    model = ImageDiffusion(DiffusionConfig(arch=arch, net=net, sample_steps=3)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.mark.parametrize("arch", ["unet", "transformer"])
def test_own_caption_encoder_reads_token_ids_and_drops_on_every_path(arch):
    model = _caption_decoder(arch)
    assert model.reads_token_ids and not _decoder(arch).reads_token_ids
    cond = _cond(2)
    cond["text_tokens"] = torch.tensor([[1, 7, 3, 0, 0], [1, 4, 9, 9, 2]])
    word = {**cond, "text_tokens": cond["text_tokens"].clone()}
    word["text_tokens"][:, 1] = torch.tensor([8, 5])  # one word changed in each caption
    no_drop = {"drop_image": torch.tensor([False, False]), "drop_text": torch.tensor([False, False])}
    base = _run(model, cond, **no_drop)
    assert _rows_differ(base, _run(model, word, **no_drop)) == [True, True]  # a word reaches the output
    padded = {**cond, "text_tokens": cond["text_tokens"].clone()}
    padded["text_tokens"][0, 3:] = 29  # only row 0's padding
    torch.testing.assert_close(base, _run(model, padded, **no_drop), rtol=0, atol=1e-5)
    # dropped caption: neither the attention tokens nor the pooled path (both from the encoder) see it
    drop = {"drop_image": torch.tensor([False, False]), "drop_text": torch.tensor([True, False])}
    a, b = _run(model, cond, **drop), _run(model, word, **drop)
    assert _rows_differ(a, b) == [False, True]
    with pytest.raises(ValueError, match="token ids"):
        _run(model, {**cond, "text_tokens": torch.randn(2, 5, 16)}, **no_drop)
    with pytest.raises(ValueError, match="at most 5"):
        _run(model, {**cond, "text_tokens": torch.ones(2, 6, dtype=torch.long), "text_mask": None}, **no_drop)
    # guided sampling with ids, and without any caption (every token masked)
    noise = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    for text in ({"text_tokens": cond["text_tokens"], "text_mask": cond["text_mask"]}, {}):
        out = model.sample(noise, image_embed=cond["image_embed"], guidance_scale=3.0, **text)
        assert out.shape == noise.shape and torch.isfinite(out).all()


def test_caption_inputs_are_ids_for_an_own_encoder_and_clip_states_otherwise():
    class FakeClip:  # records which of its two caption paths the decoder asked for
        def __init__(self):
            self.calls = []

        def tokenize(self, captions):
            self.calls.append("tokenize")
            return torch.tensor([[1, 5, 2]] * len(captions)), torch.tensor([[1, 1, 1]] * len(captions))

        def encode_prompts(self, captions):
            self.calls.append("encode_prompts")
            n = len(captions)
            return torch.zeros(n, 4), torch.ones(n, 3, 16, dtype=torch.float64), torch.ones(n, 3, dtype=torch.long)

    clip = FakeClip()
    ids, mask = _caption_decoder().caption_inputs(clip, ["a", "b"], torch.zeros(2, 3, 16), torch.ones(2, 3))
    assert clip.calls == ["tokenize"] and ids.dtype == torch.long and ids.shape == (2, 3) and mask.dtype == torch.bool
    states, mask = _decoder("unet").caption_inputs(clip, ["a", "b"])  # no states given: CLIP encodes them
    assert clip.calls[-1] == "encode_prompts" and states.dtype == torch.float32 and mask.dtype == torch.bool
    given = torch.full((2, 3, 16), 0.5)
    states, _ = _decoder("unet").caption_inputs(clip, ["a", "b"], given, torch.ones(2, 3))
    assert len(clip.calls) == 2 and torch.equal(states, given)  # the caller's states are used as they are


@pytest.mark.parametrize(
    ("over", "message"),
    [({"caption_layers": 2}, "needs caption_vocab"), ({"caption_layers": -1}, "caption_layers must be between")],
)
@pytest.mark.parametrize("arch", ["unet", "transformer"])
def test_caption_encoder_config_errors(arch, over, message):
    with pytest.raises(ValueError, match=message):
        DiffusionConfig(arch=arch, net={**_net(arch), **over})


class _Recorder(torch.nn.Module):
    """Stands in for the (prepared) model in ImageDiffusion.loss: records what it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        self.calls.append((x, t, cond))
        return torch.zeros_like(x)


def test_loss_drops_image_ten_and_caption_fifty_percent():
    model = _decoder()
    n = 4000
    torch.manual_seed(0)
    recorder = _Recorder()
    x0 = torch.rand(n, 3, SIZE, SIZE) * 2 - 1
    cond = {"image_embed": torch.randn(n, EMBED), "text_tokens": torch.zeros(n, 1, WIDTH)}
    loss = model.loss(recorder, x0, **cond)
    assert loss.ndim == 0 and torch.isfinite(loss)
    ((x_t, t, seen),) = recorder.calls
    image, text = seen["drop_image"].float(), seen["drop_text"].float()
    assert 0.08 < image.mean().item() < 0.12, image.mean()
    assert 0.46 < text.mean().item() < 0.54, text.mean()
    assert 0.03 < (image * text).mean().item() < 0.07  # drawn independently: about 5% lose both
    assert x_t.shape == x0.shape and t.min() >= 0 and t.max() < model.config.num_train_timesteps
    assert torch.equal(seen["image_embed"], cond["image_embed"])  # zeroing is the network's job
    # the rates follow the config
    recorder = _Recorder()
    _decoder(image_drop_prob=0.0, text_drop_prob=0.0).loss(recorder, x0[:100], **{k: v[:100] for k, v in cond.items()})
    assert not recorder.calls[0][2]["drop_image"].any() and not recorder.calls[0][2]["drop_text"].any()


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_min_snr_weights_each_sample_by_min_snr_gamma(prediction):
    """Min-SNR-gamma (Hang et al. 2023): per-sample MSE times min(SNR, gamma) / (SNR + 1) for v, / SNR for eps."""
    x0 = torch.rand(64, 3, SIZE, SIZE) * 2 - 1
    cond = {"image_embed": torch.randn(64, EMBED), "text_tokens": torch.zeros(64, 1, WIDTH)}
    losses = {}
    for gamma in (None, 5.0):
        model, recorder = _decoder(prediction=prediction, min_snr_gamma=gamma), _Recorder()
        torch.manual_seed(3)  # the same t and noise for both
        losses[gamma] = model.loss(recorder, x0, **cond)
        ((x_t, t, _),) = recorder.calls
    alphas = model.alphas_cumprod
    a, s = alphas[t].sqrt()[:, None, None, None], (1 - alphas[t]).sqrt()[:, None, None, None]
    noise = (x_t - a * x0) / s
    target = a * noise - s * x0 if prediction == "v" else noise  # the recorder predicts 0
    per_sample = target.pow(2).mean((1, 2, 3))
    snr = alphas[t] / (1 - alphas[t])
    weight = snr.clamp(max=5.0) / (snr + 1 if prediction == "v" else snr)
    torch.testing.assert_close(losses[None], per_sample.mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses[5.0], (per_sample * weight).mean(), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(losses[None], losses[5.0])


def test_foreground_mask_marks_pixels_off_the_median_colour():
    from dalle2 import diffusion

    x0 = torch.full((2, 3, 8, 8), -1.0)  # black background
    x0[0, 0, 2:4, 2:5] = 1.0  # a red 2x3 object in image 0
    x0[1] = 0.2  # image 1: plain grey, nothing in front
    x0[1, 2, 0, 0] = 0.25  # a pixel within the threshold of the background
    mask = diffusion.foreground_mask(x0)
    assert mask.shape == (2, 1, 8, 8)
    expected = torch.zeros(2, 1, 8, 8)
    expected[0, 0, 2:4, 2:5] = 1.0
    torch.testing.assert_close(mask, expected)


def test_mse_per_sample_with_pixel_weight_is_the_weighted_mean():
    from dalle2 import diffusion

    pred, tgt = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    w = torch.rand(3, 1, 4, 4) + 0.5
    err = (pred - tgt).pow(2)
    expected = (err * w).sum((1, 2, 3)) / (w.expand_as(err)).sum((1, 2, 3))
    torch.testing.assert_close(diffusion.mse_per_sample(pred, tgt, w), expected)
    torch.testing.assert_close(diffusion.mse_per_sample(pred, tgt, torch.ones(3, 1, 4, 4)), err.mean((1, 2, 3)))


def test_foreground_weighted_loss_counts_object_pixels_more():
    """decoder.foreground_weight: the per-sample loss is the weighted mean, weight 1 + w * alpha_bar_t on the object."""
    x0 = torch.full((64, 3, SIZE, SIZE), -1.0)
    x0[:, 1, 4:8, 4:8] = 1.0
    cond = {"image_embed": torch.randn(64, EMBED), "text_tokens": torch.zeros(64, 1, WIDTH)}
    losses = {}
    for weight in (0.0, 20.0):
        model, recorder = _decoder(foreground_weight=weight), _Recorder()
        torch.manual_seed(3)
        losses[weight] = model.loss(recorder, x0, **cond)
        ((x_t, t, _),) = recorder.calls
    alphas = model.alphas_cumprod
    a, s = alphas[t].sqrt()[:, None, None, None], (1 - alphas[t]).sqrt()[:, None, None, None]
    noise = (x_t - a * x0) / s
    err = (a * noise - s * x0).pow(2)  # the recorder predicts 0
    w = torch.ones(64, 3, SIZE, SIZE)
    w[:, :, 4:8, 4:8] += 20.0 * alphas[t][:, None, None, None]
    torch.testing.assert_close(losses[0.0], err.mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses[20.0], ((err * w).sum((1, 2, 3)) / w.sum((1, 2, 3))).mean(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="foreground_weight"):
        DiffusionConfig(net=_net("transformer"), foreground_weight=-1)


class _DrawsSquare(torch.nn.Module):
    """A v-prediction model whose x0 estimate is always a green square at rows/cols 10:14 on black."""

    def __init__(self, alphas: torch.Tensor) -> None:
        super().__init__()
        self.alphas = alphas

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        drawn = torch.full_like(x, -1.0)
        drawn[:, 1, 10:14, 10:14] = 1.0
        a, s = self.alphas[t].sqrt()[:, None, None, None], (1 - self.alphas[t]).sqrt()[:, None, None, None]
        return (a * x - drawn) / s  # v such that x0_hat = a * x_t - s * v = drawn


def test_foreground_from_prediction_weights_what_the_model_draws_not_the_target():
    """foreground_source=prediction: weight 1 + w (no alpha_bar factor) where the model's own x0 estimate is
    off its median colour; the target's object (elsewhere) gets no extra weight."""
    x0 = torch.full((16, 3, SIZE, SIZE), -1.0)
    x0[:, 0, 2:6, 2:6] = 1.0  # the real object: red, top left
    cond = {"image_embed": torch.randn(16, EMBED), "text_tokens": torch.zeros(16, 1, WIDTH)}
    model = _decoder(foreground_weight=7.0, foreground_source="prediction")
    drawer = _DrawsSquare(model.alphas_cumprod)
    torch.manual_seed(5)
    t = torch.randint(0, 1000, (16,))
    torch.manual_seed(5)
    loss = model.loss(drawer, x0, **cond)
    alphas = model.alphas_cumprod
    torch.manual_seed(5)
    torch.randint(0, 1000, (16,))
    noise = torch.randn(x0.shape)
    a, s = alphas[t].sqrt()[:, None, None, None], (1 - alphas[t]).sqrt()[:, None, None, None]
    x_t = a * x0 + s * noise
    err = (drawer(x_t, t) - (a * noise - s * x0)).pow(2)
    w = torch.ones_like(err)
    w[:, :, 10:14, 10:14] = 8.0
    torch.testing.assert_close(loss, ((err * w).sum((1, 2, 3)) / w.sum((1, 2, 3))).mean(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="foreground_source"):
        DiffusionConfig(net=_net("transformer"), foreground_source="x0")


def test_snr_floor_reaches_the_objective_and_is_checked():
    model = _decoder(min_snr_gamma=5.0, snr_floor=1.0)
    t = torch.tensor([900])
    ab = model.alphas_cumprod[t]
    assert torch.allclose(model.objective.weight(t), 1.0 / (ab / (1 - ab) + 1))  # v target, x0 weight 1
    assert DiffusionConfig.from_dict(model.config.to_dict()).snr_floor == 1.0
    with pytest.raises(ValueError, match="snr_floor"):
        DiffusionConfig(net=_net("transformer"), min_snr_gamma=5.0, snr_floor=6.0)


def test_real_loss_backpropagates():
    model = _decoder("unet").train()
    cond = _cond(3)
    loss = model.loss(model, torch.rand(3, 3, SIZE, SIZE) * 2 - 1, **cond)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert model.net.conv_out.weight.grad.abs().sum() > 0


def test_guided_sampling_unconditional_pass_sees_same_x_t_and_t():
    model = _decoder(randomize=True)
    calls = []

    def hook(module, args, kwargs):
        calls.append((args[0].clone(), args[1].clone(), {k: v.clone() for k, v in kwargs.items()}))

    handle = model.net.register_forward_pre_hook(hook, with_kwargs=True)
    cond = _cond(2)
    noise = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = model.sample(noise, **cond, guidance_scale=3.0, steps=3)
    handle.remove()
    assert out.shape == noise.shape and out.abs().max() <= 1
    assert len(calls) == 3  # one batched call (conditional + unconditional) per step
    for x, t, kw in calls:
        assert x.shape[0] == 4
        assert torch.equal(x[:2], x[2:]), "the unconditional pass must see the same x_t"
        assert torch.equal(t[:2], t[2:]), "the unconditional pass must see the same t"
        assert not kw["drop_image"][:2].any() and not kw["drop_text"][:2].any()
        assert kw["drop_image"][2:].all() and kw["drop_text"][2:].all()
        assert torch.equal(kw["image_embed"][:2], cond["image_embed"])
        assert torch.equal(kw["text_mask"][:2], cond["text_mask"])
    # guidance scale 1: the conditional pass alone
    calls.clear()
    handle = model.net.register_forward_pre_hook(hook, with_kwargs=True)
    model.sample(noise, **cond, guidance_scale=1.0, steps=2)
    handle.remove()
    assert len(calls) == 2 and all(x.shape[0] == 2 and not kw["drop_image"].any() for x, _, kw in calls)


def test_guidance_drops_text_only_keeps_z_i_in_the_unconditional_pass():
    model = _decoder(randomize=True, guidance_drops=["text"])
    calls = []
    handle = model.net.register_forward_pre_hook(lambda m, a, kw: calls.append(dict(kw)), with_kwargs=True)
    model.sample(torch.randn(2, 3, SIZE, SIZE), **_cond(2), guidance_scale=3.0, steps=2)
    handle.remove()
    for kw in calls:
        assert not kw["drop_image"].any(), "z_i stays in both passes"
        assert not kw["drop_text"][:2].any() and kw["drop_text"][2:].all()
    assert model.config.to_dict()["guidance_drops"] == ("text",)
    with pytest.raises(ValueError, match="guidance_drops must name image and/or text"):
        DiffusionConfig(guidance_drops=["caption"])


def test_guided_output_is_the_cfg_combination():
    """One step with guidance s equals uncond + s * (cond - uncond), computed from two plain passes."""
    model = _decoder(randomize=True, sampler="ddim")
    cond = _cond(2)
    noise = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    outs = {}
    for scale in (0.0, 1.0, 2.5):
        outs[scale] = model.sample(noise, **cond, guidance_scale=scale, steps=1)
    # with one DDIM step to alpha_bar = 1, the sample is x0 (before clamping): linear in the model output
    expected = (outs[0.0] + 2.5 * (outs[1.0] - outs[0.0])).clamp(-1, 1)
    inside = (outs[0.0].abs() < 0.999) & (outs[1.0].abs() < 0.999) & (outs[2.5].abs() < 0.999)
    assert inside.float().mean() > 0.05  # compare where no clamping happened
    torch.testing.assert_close(outs[2.5][inside], expected[inside], rtol=1e-4, atol=1e-4)


def test_sample_without_caption_and_errors():
    model = _decoder(randomize=True)
    noise = torch.randn(2, 3, SIZE, SIZE)
    out = model.sample(noise, image_embed=torch.randn(2, EMBED), steps=2)
    assert out.shape == noise.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="needs image_embed"):
        model.sample(noise)
    with pytest.raises(ValueError, match="needs low_res"):
        _upsampler().sample(noise)


# -- upsampler -----------------------------------------------------------------------------------------


def test_upsampler_loss_and_sample():
    up = _upsampler().train()
    hi = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
    low = torch.nn.functional.avg_pool2d(hi, 2)
    recorder = _Recorder()
    torch.manual_seed(0)
    up.loss(recorder, hi, low_res=low)
    ((_, _, seen),) = recorder.calls
    assert set(seen) == {"low_res", "noise_level"}  # no caption, no drop flags
    assert seen["low_res"].shape == low.shape and not torch.allclose(seen["low_res"], low)  # blurred and noised
    assert 0 <= seen["noise_level"].min() and seen["noise_level"].max() < up.config.max_aug_level
    loss = up.loss(up, hi, low_res=low)
    loss.backward()
    assert torch.isfinite(loss)
    up.eval()
    out = up.sample(torch.randn(2, 3, SIZE, SIZE), low_res=low[:2])
    assert out.shape == (2, 3, SIZE, SIZE) and out.abs().max() <= 1
    assert up.image_size == SIZE


def test_upsampler_sampling_noises_low_res_at_the_sample_level():
    up = _upsampler(sample_aug_level=37)
    seen = []
    handle = up.net.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["noise_level"].clone()), with_kwargs=True)
    up.sample(torch.randn(2, 3, SIZE, SIZE), low_res=torch.zeros(2, 3, SIZE // 2, SIZE // 2), steps=2)
    handle.remove()
    assert len(seen) == 2 and all(torch.equal(s, torch.tensor([37, 37])) for s in seen)


def test_corrupt_low_res_level_zero_is_nearly_identity():
    up = _upsampler()
    low = torch.rand(4, 3, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(0)
    same = up.corrupt_low_res(low, torch.zeros(4, dtype=torch.long), g)
    assert (same - low).abs().max() < 0.05
    noisy = up.corrupt_low_res(low, torch.full((4,), 900), g)
    assert (noisy - low).abs().mean() > 0.5
    # per-sample levels
    mixed = up.corrupt_low_res(low, torch.tensor([0, 0, 900, 900]), g)
    assert (mixed[:2] - low[:2]).abs().max() < 0.05 and (mixed[2:] - low[2:]).abs().mean() > 0.5


def test_blur():
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(blur(x, torch.full((3,), 1e-4)), x)  # tiny sigma: identity
    sigmas = torch.tensor([1e-4, 0.5, 2.0])
    out = blur(x, sigmas)
    variances = [out[i].var().item() for i in range(3)]
    assert variances[0] > variances[1] > variances[2]  # more blur, less variance (per sample)
    assert variances[2] < 0.3 * x[2].var().item()
    const = torch.full((1, 3, 8, 8), 0.7)
    torch.testing.assert_close(blur(const, torch.tensor([1.5])), const)  # normalised kernel keeps the mean


# -- inpainting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["decoder", "upsampler"])
def test_inpainting_keeps_known_pixels_exactly(role):
    model = _decoder(randomize=True) if role == "decoder" else _upsampler()
    g = torch.Generator().manual_seed(0)
    known = torch.rand(2, 3, SIZE, SIZE, generator=g) * 1.6 - 0.8
    keep = torch.zeros(2, 1, SIZE, SIZE)
    keep[:, :, :, : SIZE // 2] = 1  # keep the left half
    cond = _cond(2) if role == "decoder" else {"low_res": torch.zeros(2, 3, SIZE // 2, SIZE // 2)}
    seen = []
    handle = model.net.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0].clone()), with_kwargs=True)
    out = model.sample(torch.randn(2, 3, SIZE, SIZE, generator=g), **cond, inpaint=(known, keep), steps=3)
    handle.remove()
    assert torch.equal(out[..., : SIZE // 2], known[..., : SIZE // 2])
    assert not torch.allclose(out[..., SIZE // 2 :], known[..., SIZE // 2 :])
    # the network saw the known region noised to the current step, not the sampler's own values there
    last = seen[-1][:2]
    assert (last[..., : SIZE // 2] - known[..., : SIZE // 2]).abs().mean() < 0.5


# -- save / load ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["transformer", "unet", "upsampler"])
def test_save_load_round_trip(kind, tmp_path):
    model = _upsampler() if kind == "upsampler" else _decoder(kind, randomize=True, guidance_scale=2.0)
    folder = model.save_pretrained(tmp_path / kind)
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["role"] == model.config.role
    loaded = ImageDiffusion.from_pretrained(folder)
    assert loaded.config == model.config and not loaded.training
    noise = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    cond = _cond(2) if kind != "upsampler" else {"low_res": torch.rand(2, 3, SIZE // 2, SIZE // 2)}
    a = model.sample(noise, **cond, generator=torch.Generator().manual_seed(1))
    b = loaded.sample(noise, **cond, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def _saved(tmp_path) -> tuple:
    folder = _decoder().save_pretrained(tmp_path / "decoder")
    return folder, json.loads((folder / "config.json").read_text())


def test_load_future_format_version(tmp_path):
    folder, meta = _saved(tmp_path)
    (folder / "config.json").write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(ValueError, match="format version 2; this dalle2 reads version 1"):
        ImageDiffusion.from_pretrained(folder)


def test_load_unknown_keys(tmp_path):
    folder, meta = _saved(tmp_path)
    (folder / "config.json").write_text(json.dumps({**meta, "bogus": 1}))
    with pytest.raises(ValueError, match=r"config\.json: unknown keys: \['bogus'\]"):
        ImageDiffusion.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**meta, "net": {**meta["net"], "channels": [8]}}))
    with pytest.raises(ValueError, match=r"unknown transformer config keys: \['channels'\]"):
        ImageDiffusion.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ImageDiffusion.from_pretrained(folder)


def test_load_wrong_shaped_weights(tmp_path):
    folder, meta = _saved(tmp_path)
    (folder / "config.json").write_text(json.dumps({**meta, "net": {**meta["net"], "width": 48}}))
    with pytest.raises(ValueError, match="model.safetensors does not match config.json .*size mismatch"):
        ImageDiffusion.from_pretrained(folder)


def test_load_corrupt_weights(tmp_path):
    folder, _ = _saved(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        ImageDiffusion.from_pretrained(folder)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_load_missing_files(tmp_path, missing):
    folder, _ = _saved(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(ValueError, match=rf"{re.escape(missing)}: file not found \(an incomplete component folder"):
        ImageDiffusion.from_pretrained(folder)
    with pytest.raises(ValueError, match="nowhere: component folder not found"):
        ImageDiffusion.from_pretrained(tmp_path / "nowhere")


def test_bad_diffusion_configs():
    with pytest.raises(ValueError, match="role must be decoder or upsampler"):
        DiffusionConfig(role="prior")
    with pytest.raises(ValueError, match="arch must be one of"):
        DiffusionConfig(arch="mlp")
    with pytest.raises(ValueError, match="an upsampler needs low_res_size"):
        DiffusionConfig(role="upsampler", arch="unet")
    with pytest.raises(ValueError, match="image_drop_prob and text_drop_prob"):
        DiffusionConfig(text_drop_prob=1.0)
    with pytest.raises(ValueError, match="sample_steps must be in"):
        DiffusionConfig(sample_steps=0)
    with pytest.raises(ValueError, match="unknown transformer config keys"):
        DiffusionConfig(net={"depht": 2})


# -- self-conditioning (Chen et al. 2022) ----------------------------------------------------------------


def _self_cond_decoder(arch: str) -> ImageDiffusion:
    torch.manual_seed(0)
    model = ImageDiffusion(DiffusionConfig(arch=arch, net={**_net(arch), "self_condition": True}, sample_steps=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("arch", ["unet", "transformer"])
def test_self_condition_input_reaches_the_output_and_none_means_zeros(arch):
    model = _self_cond_decoder(arch)
    assert model.self_conditions and not _decoder(arch).self_conditions
    cond = _cond(2)
    estimate = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4)) * 2 - 1
    base = _run(model, cond)
    assert _rows_differ(base, _run(model, {**cond, "self_cond": estimate})) == [True, True]
    torch.testing.assert_close(base, _run(model, {**cond, "self_cond": torch.zeros_like(estimate)}), rtol=0, atol=0)


class _SelfCondRecorder(_Recorder):
    """Predicts a fixed v of 0.3 (so its x0 estimates are known) and records every call."""

    def forward(self, x, t, **cond):
        self.calls.append((x, t, cond))
        return torch.full_like(x, 0.3)


def test_self_conditioning_loss_feeds_half_the_batches_their_own_detached_estimate():
    from dalle2 import diffusion

    model = _self_cond_decoder("unet")
    x0 = torch.rand(6, 3, SIZE, SIZE) * 2 - 1
    cond = {"image_embed": torch.randn(6, EMBED), "text_tokens": torch.zeros(6, 1, WIDTH)}
    torch.manual_seed(0)
    twice = 0
    for _ in range(200):
        recorder = _SelfCondRecorder()
        model.loss(recorder, x0, **cond)
        assert len(recorder.calls) in (1, 2)
        if len(recorder.calls) == 1:
            assert "self_cond" not in recorder.calls[0][2]  # the network fills in zeros
            continue
        twice += 1
        (x_t, t, first), (x_t2, t2, second) = recorder.calls
        assert torch.equal(x_t, x_t2) and torch.equal(t, t2) and "self_cond" not in first
        assert torch.equal(first["drop_image"], second["drop_image"])  # the same condition in both passes
        alpha, sigma = diffusion.alpha_sigma(model.alphas_cumprod, t, x_t)
        expected = (alpha * x_t - sigma * 0.3).clamp(-1, 1)  # x0 from v = 0.3
        torch.testing.assert_close(second["self_cond"], expected)
        assert not second["self_cond"].requires_grad
    assert 70 < twice < 130, twice


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_self_conditioned_sampling_feeds_each_step_the_previous_guided_estimate(sampler):
    from dalle2 import diffusion

    model = _self_cond_decoder("unet")
    calls = []
    net_forward = model.net.forward

    def recording(x, t, **cond):
        out = net_forward(x, t, **cond)
        calls.append((x, t, cond["self_cond"], cond["drop_text"], out))
        return out

    model.net.forward = recording
    noise = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(0)
    out = model.sample(noise, **_cond(2), sampler=sampler, guidance_scale=2.0, generator=g)
    assert out.shape == noise.shape and torch.isfinite(out).all() and len(calls) == 4  # one batched call a step
    assert torch.equal(calls[0][2], torch.zeros(4, 3, SIZE, SIZE))  # nothing estimated yet
    for (x, t, _, drop, raw), following in zip(calls, calls[1:], strict=False):
        assert drop.tolist() == [False, False, True, True]  # conditional and unconditional halves, one batch
        out_c, out_u = raw.chunk(2)
        guided = out_u + 2.0 * (out_c - out_u)
        alpha, sigma = diffusion.alpha_sigma(model.alphas_cumprod, t[:2], x[:2])
        estimate = diffusion.to_x0_eps(guided, x[:2], alpha, sigma, "v")[0].clamp(-1, 1)
        torch.testing.assert_close(following[2], torch.cat([estimate, estimate]))
