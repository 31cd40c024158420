"""The GAN networks (both recipes), losses, MA-GP, mismatched pairs, DiffAugment and the two-phase objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalle2.folder_format import FolderError
from dalle2.gan_pipeline import slerp_noise
from dalle2.models.diffaugment import diff_augment
from dalle2.models.gan import Discriminator, GanConfig, GanConfigError, Generator
from dalle2.models.gan_objective import (
    GanObjective,
    ObjectiveConfig,
    discriminator_loss,
    generator_loss,
    ma_gradient_penalty,
    mismatched,
    mode_seeking_loss,
    weight_penalty,
)

EMBED = 12


def embeds(b: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(b, EMBED, generator=torch.Generator().manual_seed(seed)), dim=1)


# -- networks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "channels", "spectral"), [(32, 3, False), (16, 1, True), (8, 3, False)])
def test_dfgan_shapes(size, channels, spectral):
    config = GanConfig(image_size=size, channels=channels, embed_dim=EMBED, z_dim=10, g_width=4, d_width=4,
                       spectral_norm=spectral)  # fmt: skip
    g, d = Generator(config), Discriminator(config)
    x = g(torch.randn(5, 10), embeds(5))
    assert x.shape == (5, channels, size, size) and x.abs().max() <= 1
    assert d(x, embeds(5)).shape == (5,)
    assert len(g.net.blocks) == {32: 3, 16: 2, 8: 1}[size]  # 4x4 -> size, x2 per block
    assert config.widths(4) == {32: {32: 4, 16: 8, 8: 16, 4: 32}, 16: {16: 4, 8: 8, 4: 16}, 8: {8: 4, 4: 8}}[size]


def test_projection_discriminator_adds_the_inner_product_term():
    torch.manual_seed(0)
    config = GanConfig(image_size=16, embed_dim=EMBED, z_dim=8, g_width=4, d_width=4, projection=True)
    d = Discriminator(config)
    x, s = torch.randn(3, 3, 16, 16), embeds(3)
    with torch.no_grad():
        full = d(x, s)
        h = d.net.blocks(d.net.from_image(x))
        term = (d.net.project(s) * F.leaky_relu(h, 0.2).mean((2, 3))).sum(1)
        d.net.project.weight.zero_()
        without = d(x, s)
    assert term.abs().min() > 0
    torch.testing.assert_close(full, without + term)
    assert Discriminator(GanConfig(image_size=16, embed_dim=EMBED, d_width=4)).net.project is None  # off by default


def test_minibatch_std_is_per_group_of_consecutive_images():
    from dalle2.models.gan import minibatch_std

    h = torch.zeros(8, 2, 4, 4)
    h[4, 0] = 1.0  # the third group of two (images 4 and 5) differs in channel 0 only
    out = minibatch_std(h, 2)
    assert out.shape == (8, 1, 4, 4)
    per_image = out[:, 0, 0, 0]
    expected = torch.tensor([0, 0, 0, 0, 0.25, 0.25, 0, 0]) + 1e-4  # std 0.5 and 0 (+ sqrt(1e-8)), averaged
    torch.testing.assert_close(per_image, expected, atol=1e-3, rtol=0)
    assert torch.all(minibatch_std(h[:7], 2) < 1e-3)  # 7 images: groups of 1, a zero map
    config = GanConfig(image_size=16, embed_dim=EMBED, z_dim=8, d_width=4, minibatch_std=4)
    d = Discriminator(config)
    x = torch.randn(8, 3, 16, 16)
    assert d(x, embeds(8)).shape == (8,)
    with torch.no_grad():  # D's logit for image 0 depends on the other images of its group only
        changed = x.clone()
        changed[5] = torch.randn(3, 16, 16)
        assert torch.equal(d(x, embeds(8))[:4], d(changed, embeds(8))[:4])
        changed[1] = torch.randn(3, 16, 16)
        assert not torch.equal(d(x, embeds(8))[0], d(changed, embeds(8))[0])
    with pytest.raises(GanConfigError, match="minibatch_std must be >= 0"):
        GanConfig(minibatch_std=-1)
    with pytest.raises(GanConfigError, match="minibatch_std is a dfgan discriminator layer"):
        GanConfig(arch="article", image_size=28, minibatch_std=4)


def test_dfgan_generator_starts_unconditioned_and_learns_to_listen():
    """DF-GAN's affine layers start as the identity: at initialisation the caption changes nothing."""
    torch.manual_seed(0)
    g = Generator(GanConfig(image_size=16, embed_dim=EMBED, z_dim=8, g_width=4))
    z = torch.randn(1, 8).expand(2, -1)
    with torch.no_grad():
        out = g(z, embeds(2))
    assert torch.equal(out[0], out[1])


def test_article_networks():
    config = GanConfig(arch="article", image_size=28, channels=1, embed_dim=EMBED, z_dim=100)
    g, d = Generator(config), Discriminator(config)
    linear = [m for m in g.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linear] == [128, 256, 512, 1024, 28 * 28]
    assert linear[0].in_features == 100 + EMBED  # the text is fed to the generator
    norms = [m for m in g.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [m.num_features for m in norms] == [256, 512, 1024] and all(m.momentum == 0.2 for m in norms)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (w, (3, 3), (2, 2)) for w in (32, 64, 128, 256)
    ]
    assert d.net.logit.in_features == 256 * 2 * 2 + EMBED  # 28 -> 14 -> 7 -> 4 -> 2, then the text
    x = g(torch.randn(6, 100), embeds(6))
    assert x.shape == (6, 1, 28, 28) and x.abs().max() <= 1
    assert d(x, embeds(6)).shape == (6,)


def test_config_errors():
    with pytest.raises(GanConfigError, match="4 x a power of two"):
        GanConfig(image_size=28)
    with pytest.raises(GanConfigError, match="arch must be one of dfgan, article"):
        GanConfig(arch="stylegan")
    with pytest.raises(GanConfigError, match="unknown GAN network keys depth"):
        GanConfig.from_dict({"depth": 3})
    with pytest.raises(GanConfigError, match="channels must be 1 or 3"):
        GanConfig(channels=4)


def test_generator_save_and_load(tmp_path):
    torch.manual_seed(1)
    g = Generator(GanConfig(image_size=16, embed_dim=EMBED, z_dim=8, g_width=4)).eval()
    g.save_pretrained(tmp_path / "gan")
    loaded = Generator.from_pretrained(tmp_path / "gan")
    z, s = torch.randn(3, 8), embeds(3)
    with torch.no_grad():
        assert torch.equal(g(z, s), loaded(z, s))
    (tmp_path / "gan" / "config.json").write_text('{"model": "clip"}')
    with pytest.raises(FolderError, match=r"gan/config\.json: no component header"):
        Generator.from_pretrained(tmp_path / "gan")


# -- losses ------------------------------------------------------------------------------------------


def test_hinge_and_bce_losses():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])
    assert discriminator_loss("hinge", real, fake).item() == pytest.approx(0.5 + 0.5)
    assert generator_loss("hinge", fake).item() == pytest.approx(1.0)
    bce = F.binary_cross_entropy(torch.sigmoid(real), torch.ones(2)) + F.binary_cross_entropy(
        torch.sigmoid(fake), torch.zeros(2)
    )
    assert discriminator_loss("bce", real, fake).item() == pytest.approx(bce.item(), rel=1e-5)
    # non-saturating: -log D(G(z)), not log(1 - D(G(z))); its gradient stays large when D wins
    logit = torch.tensor([-8.0], requires_grad=True)
    generator_loss("bce", logit).backward()
    assert logit.grad.item() == pytest.approx(-1.0, abs=1e-3)
    assert generator_loss("bce", torch.tensor([0.0])).item() == pytest.approx(-torch.log(torch.tensor(0.5)).item())
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
        generator_loss("wgan", fake)


def test_mismatch_pairs_roll_the_captions_and_skip_equal_ones():
    s = embeds(4)
    s[2] = s[1]  # rows 1 and 2 share a caption
    wrong, keep = mismatched(s)
    assert torch.equal(wrong, s.roll(1, 0))
    assert keep.tolist() == [True, True, False, True]
    real, fake = torch.ones(4) * 2, -torch.ones(4) * 2
    mismatch = torch.tensor([0.0, 0.0, 5.0, 0.0])  # the skipped pair's loss must not count
    assert discriminator_loss("hinge", real, fake, mismatch, keep).item() == pytest.approx(0.5)


class LinearD(nn.Module):
    def __init__(self, pixels: int, ignore_input: bool = False) -> None:
        super().__init__()
        self.w, self.u = nn.Parameter(torch.full((pixels,), 0.1)), nn.Parameter(torch.full((EMBED,), 0.2))
        self.bias, self.ignore = nn.Parameter(torch.tensor(0.3)), ignore_input

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if self.ignore:
            return self.bias.expand(x.shape[0])
        return x.flatten(1) @ self.w + s @ self.u + self.bias


def test_ma_gp_is_a_real_gradient_penalty():
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    s = embeds(3).requires_grad_()
    blind = LinearD(4, ignore_input=True)
    assert ma_gradient_penalty(blind(x, s), x, s).item() == 0.0
    d = LinearD(4)
    gp = ma_gradient_penalty(d(x, s), x, s, weight=2.0, power=6.0)
    norm2 = 4 * 0.1**2 + EMBED * 0.2**2  # ||dD/dx||^2 + ||dD/ds||^2, the same for every sample
    assert gp.item() == pytest.approx(2.0 * norm2**3, rel=1e-5)
    gp.backward()  # differentiable: minimising it shrinks D's weights
    assert d.w.grad is not None and (d.w.grad > 0).all() and (d.u.grad > 0).all()


def test_unit_embed_scale_feeds_both_networks_the_embedding_times_sqrt_dim():
    torch.manual_seed(0)
    plain = GanConfig(image_size=16, embed_dim=EMBED, z_dim=8, g_width=4, d_width=4)
    unit = GanConfig(**{**plain.to_dict(), "embed_scale": "unit"})
    assert plain.embed_scale == "none" and plain.embed_gain == 1.0  # configs saved before the key load as before
    assert unit.embed_gain == pytest.approx(EMBED**0.5)
    g0, d0 = Generator(plain), Discriminator(plain)
    g1, d1 = Generator(unit), Discriminator(unit)
    g1.load_state_dict(g0.state_dict())
    d1.load_state_dict(d0.state_dict())
    for module in (*g0.modules(), *d0.modules()):  # make the caption matter at initialisation
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.3)
    g1.load_state_dict(g0.state_dict())
    d1.load_state_dict(d0.state_dict())
    z, s, x = torch.randn(3, 8), embeds(3), torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(g1(z, s), g0(z, s * EMBED**0.5))
        torch.testing.assert_close(d1(x, s), d0(x, s * EMBED**0.5))
        assert not torch.allclose(g1(z, s), g0(z, s))
    with pytest.raises(GanConfigError, match="embed_scale must be one of none, unit"):
        GanConfig(embed_scale="double")


def test_ma_gp_is_taken_in_the_space_the_discriminator_sees():
    """With a gain on s inside D, the penalty is that of a D fed s * gain directly."""
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    s = embeds(3).requires_grad_()
    d = LinearD(4)
    gain = 3.0
    scaled = (s.detach() * gain).requires_grad_()
    expected = ma_gradient_penalty(d(x, scaled), x, scaled)
    got = ma_gradient_penalty(d(x, s * gain), x, s, embed_gain=gain)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert ma_gradient_penalty(d(x, s * gain), x, s).item() > 2 * got.item()  # without it: gain^2 on the s part


def test_weight_penalty():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
    assert weight_penalty(layer, 0.0, 0.0) is None
    assert weight_penalty(layer, 0.1, 0.0).item() == pytest.approx(0.35)  # biases are not regularised
    assert weight_penalty(layer, 0.0, 0.01).item() == pytest.approx(0.0525)


# -- DiffAugment -------------------------------------------------------------------------------------


def test_diffaugment_is_random_differentiable_and_keeps_shapes():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    y = diff_augment(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    ones = torch.ones(64, 1, 16, 16)
    cut = diff_augment(ones, ("cutout",))
    side = (4 + 5 + 6 + 7 + 8 * 9 + 7 + 6 + 5 + 4) / 17  # mean rows covered: an 8-row band, centre in 0..16
    assert (cut == 0).float().mean().item() == pytest.approx((side / 16) ** 2, abs=0.04)
    moved = diff_augment(ones, ("translation",))
    assert set(moved.unique().tolist()) <= {0.0, 1.0} and (moved == 1).float().mean() > 0.7
    torch.manual_seed(3)
    a = diff_augment(x.detach())
    torch.manual_seed(3)
    assert torch.equal(a, diff_augment(x.detach()))
    with pytest.raises(ValueError, match="unknown DiffAugment transform 'rotate'"):
        diff_augment(x, ("rotate",))


# -- the two-phase objective -------------------------------------------------------------------------


class RecordingD(nn.Module):
    """A discriminator that remembers what it was shown."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.detach().clone(), s.detach().clone()))
        return self.scale * (x.flatten(1).mean(1) + s.sum(1))


def objective(**options) -> tuple[GanObjective, RecordingD]:
    torch.manual_seed(0)
    g = Generator(GanConfig(image_size=8, channels=1, embed_dim=EMBED, z_dim=4, g_width=2))
    d = RecordingD()
    return GanObjective(g, d, ObjectiveConfig(**{"diffaugment": False, **options})), d


def test_discriminator_step_sees_real_fake_and_rolled_captions():
    model, d = objective(ma_gp=2.0)
    images, s = torch.rand(4, 1, 8, 8) * 2 - 1, embeds(4)
    out = model("discriminator", images, s)
    x, cond = d.seen[-1]
    assert x.shape[0] == 12 and torch.equal(x[:4], images) and torch.equal(x[8:], images)
    assert torch.equal(cond[:4], s) and torch.equal(cond[4:8], s) and torch.equal(cond[8:], s.roll(1, 0))
    assert set(out) == {"loss", "d_real", "d_fake", "d_mismatch", "accuracy", "ma_gp"} and out["ma_gp"] > 0
    out["loss"].backward()
    assert d.scale.grad is not None and all(p.grad is None for p in model.generator.parameters())

    model, d = objective(mismatch=False, ma_gp=0.0)
    out = model("discriminator", images, s)
    assert d.seen[-1][0].shape[0] == 8 and "ma_gp" not in out and "d_mismatch" not in out


def test_generator_step_trains_only_the_generator():
    model, d = objective()
    out = model("generator", embeds=embeds(4))
    out["loss"].backward()
    assert d.scale.grad is None and d.scale.requires_grad  # D frozen for the step, unfrozen after
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
    with pytest.raises(ValueError, match="unknown GAN phase"):
        model("critic", embeds=embeds(4))


def test_mode_seeking_pairs_captions_and_penalises_identical_images():
    """gan.mode_seeking: the second half of G's batch repeats the first half's captions; the term is MSGAN's
    1 / (mean|G(z1, s) - G(z2, s)| / mean|z1 - z2| + 1e-5), added with its weight."""
    a, b = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    za, zb = torch.zeros(2, 3), torch.ones(2, 3)
    assert mode_seeking_loss(a, b, za, zb).item() == pytest.approx(1 / (0.5 + 1e-5))
    assert mode_seeking_loss(a, a.clone(), za, zb).item() == pytest.approx(1e5)  # collapsed: huge
    with pytest.raises(ValueError, match="mode_seeking must be >= 0"):
        ObjectiveConfig(mode_seeking=-1.0)

    s = embeds(5)
    model, d = objective(mode_seeking=2.0)
    torch.manual_seed(1)
    out = model("generator", embeds=s)
    fake, cond = d.seen[-1]
    assert torch.equal(cond[:2], s[:2]) and torch.equal(cond[2:4], s[:2]) and torch.equal(cond[4:], s[4:])
    torch.manual_seed(1)
    z = torch.randn(5, model.generator.z_dim)
    ms = mode_seeking_loss(fake[:2], fake[2:4], z[:2], z[2:4])
    adversarial = generator_loss("hinge", d.scale.detach() * (fake.flatten(1).mean(1) + cond.sum(1)))
    assert out["mode_seeking"].item() == pytest.approx(ms.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((adversarial + 2.0 * ms).item(), rel=1e-5)
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
    plain, d = objective()
    assert "mode_seeking" not in plain("generator", embeds=s) and torch.equal(d.seen[-1][1], s)


def test_lazy_ma_gp_every_second_step():
    model, _ = objective(ma_gp=2.0, ma_gp_every=2)
    images, s = torch.rand(4, 1, 8, 8), embeds(4)
    had = ["ma_gp" in model("discriminator", images, s) for _ in range(4)]
    assert had == [True, False, True, False] and int(model.d_steps) == 4
    assert "d_steps" in model.state_dict()  # checkpointed, so a resume keeps the rhythm
    with pytest.raises(ValueError, match="ma_gp_every must be an integer >= 1"):
        ObjectiveConfig(ma_gp_every=0)


def test_slerp_noise_ends():
    a, b = torch.randn(2, 16).unbind(0)
    assert torch.allclose(slerp_noise(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp_noise(a, b, 1.0), b, atol=1e-5)
