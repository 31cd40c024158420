"""Schedule, parameterization, guidance and sampler parity against diffusers' schedulers."""

import pytest
import torch
from torch import nn

from dalle2 import diffusion as D
from dalle2.errors import InvalidConfigError

diffusers = pytest.importorskip("diffusers")

T = 1000
DIFFUSERS_PRED = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


class ToyNet(nn.Module):
    """A fixed, seeded function of (x, t): a tiny MLP on [x, sin/cos(t)]."""

    def __init__(self, dim: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.randn(dim + 2, 16, generator=g) / 3
        self.w2 = torch.randn(16, dim, generator=g) / 4

    def forward(self, x, t):
        tt = t.float()[:, None] / T
        h = torch.cat([x, torch.sin(3 * tt), torch.cos(3 * tt)], dim=1)  # (B, dim + 2)
        return torch.tanh(h @ self.w1) @ self.w2


def _reference(scheduler, net, x, step_kwargs=None):
    for t in scheduler.timesteps:
        out = net(x, t.expand(x.shape[0]))
        x = scheduler.step(out, t, x, **(step_kwargs or {})).prev_sample
    return x


def _x_init(seed=1):
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(seed))


def test_schedule_matches_diffusers_and_endpoints():
    ac = D.cosine_alphas_cumprod(T)
    ref = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    assert torch.equal(ac, ref)
    assert ac[0] > 0.9999 and ac[-1] < 1e-8
    assert torch.all(ac[1:] < ac[:-1])
    ts = D.make_timesteps(10, T)
    assert ts.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert D.make_timesteps(7, T)[0] == 999
    with pytest.raises(ValueError):
        D.make_timesteps(0, T)


def test_parameterizations_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    ac = D.cosine_alphas_cumprod(T)
    t = torch.tensor([0, 10, 500, 900, 990])
    a, s = D.alpha_sigma(ac, t, x0)
    x_t = D.q_sample(ac, x0, t, eps)
    for pred in D.PREDICTIONS:
        out = D.target(x0, eps, a, s, pred)
        x0_hat, eps_hat = D.to_x0_eps(out, x_t, a, s, pred)
        assert torch.allclose(x0_hat, x0, atol=1e-3), pred
        assert torch.allclose(eps_hat, eps, atol=1e-3), pred
    v = D.v_from_x0_eps(x0, eps, a, s)
    assert torch.allclose(D.x0_from_v(x_t, v, a, s), x0, atol=1e-5)
    assert torch.allclose(D.eps_from_v(x_t, v, a, s), eps, atol=1e-5)


def test_objective_loss_is_per_sample_and_zero_for_oracle():
    ac = D.cosine_alphas_cumprod(T)
    x0 = torch.randn(3, 4)
    noise = torch.randn(3, 4)
    t = torch.tensor([5, 300, 800])
    for pred in D.PREDICTIONS:
        objective = D.Objective(pred, T)
        x_t, a, s = objective.noised(x0, t, noise)
        assert torch.allclose(x_t, D.q_sample(ac, x0, t, noise))
        oracle = D.target(x0, noise, a, s, pred)
        assert objective.loss(oracle, x0, noise, t).shape == (3,)
        assert torch.allclose(objective.loss(oracle, x0, noise, t), torch.zeros(3))
        assert objective.loss(oracle + 1, x0, noise, t).allclose(torch.ones(3))
    assert "alphas_cumprod" not in D.Objective().state_dict()
    assert torch.equal(D.Objective(num_train_timesteps=T).alphas_cumprod, ac)


def _noisy_prediction(objective, pred):
    """A prediction near the target at four timesteps, low to high noise: (out, x0, noise, t, its x0 MSE per
    sample, SNR per sample)."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    t = torch.tensor([10, 200, 500, 900])
    x_t, a, s = objective.noised(x0, t, noise)
    out = D.target(x0, noise, a, s, pred) + 0.1 * torch.randn(4, 6, generator=g)
    x0_hat, _ = D.to_x0_eps(out, x_t, a, s, pred)
    ab = D.cosine_alphas_cumprod(T)[t]
    return out, x0, noise, t, (x0_hat - x0).pow(2).mean(1), ab / (1 - ab)


@pytest.mark.parametrize("pred", D.PREDICTIONS)
def test_min_snr_weight_is_the_same_in_x0_terms(pred):
    """Min-SNR-gamma weights every parameterization's MSE so that it equals min(SNR, gamma) * ||x0_hat - x0||^2."""
    gamma = 5.0
    objective = D.Objective(pred, T, min_snr_gamma=gamma)
    out, x0, noise, t, x0_error, snr = _noisy_prediction(objective, pred)
    expected = snr.clamp(max=gamma) * x0_error
    assert torch.allclose(objective.loss(out, x0, noise, t), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pred", D.PREDICTIONS)
@pytest.mark.parametrize("gamma", [5.0, None])
def test_snr_floor_clamps_the_x0_weight_from_below(pred, gamma):
    """snr_floor 1 (truncated SNR, Salimans & Ho 2022) gives every parameterization the x0-space weight
    clamp(SNR, 1, gamma): 1 on the high-noise steps, where Min-SNR alone gives ~SNR."""
    objective = D.Objective(pred, T, min_snr_gamma=gamma, snr_floor=1.0)
    out, x0, noise, t, x0_error, snr = _noisy_prediction(objective, pred)
    expected = snr.clamp(min=1.0, max=gamma) * x0_error
    assert torch.allclose(objective.loss(out, x0, noise, t), expected, rtol=1e-4, atol=1e-6)
    assert snr[-1] < 0.1  # t = 900 is a high-noise step: the floor raised its weight more than tenfold
    if gamma is not None:  # against Min-SNR alone: the same weight where SNR >= 1, over ten times more at t = 900
        floorless = D.Objective(pred, T, min_snr_gamma=gamma)
        ratio = objective.loss(out, x0, noise, t) / floorless.loss(out, x0, noise, t)
        assert ratio[-1] > 10 and torch.allclose(ratio[:2], torch.ones(2))


@pytest.mark.parametrize("floor, gamma", [(-0.5, 5.0), (6.0, 5.0)])
def test_snr_floor_outside_0_to_gamma_is_refused(floor, gamma):
    with pytest.raises(InvalidConfigError, match="snr_floor"):
        D.Objective("v", T, min_snr_gamma=gamma, snr_floor=floor)


def test_objective_draws_from_the_generator_or_the_global_rng():
    x0 = torch.zeros(5, 3)
    first = D.Objective().draw(x0, torch.Generator().manual_seed(1))
    again = D.Objective().draw(x0, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    torch.manual_seed(4)
    t, noise = D.Objective().draw(x0)
    torch.manual_seed(4)
    assert torch.equal(t, torch.randint(0, 1000, (5,))) and torch.equal(noise, torch.randn(5, 3))


@pytest.mark.parametrize("pred", ["v", "eps"])
def test_ddpm_parity(pred):
    net, x = ToyNet(), _x_init()
    sch = diffusers.DDPMScheduler(
        beta_schedule="squaredcos_cap_v2",
        prediction_type=DIFFUSERS_PRED[pred],
        clip_sample=False,
        timestep_spacing="trailing",
        variance_type="fixed_small",
    )
    sch.set_timesteps(10)
    ref = _reference(sch, net, x, {"generator": torch.Generator().manual_seed(7)})
    ours = D.sample_ddpm(
        net, x, D.cosine_alphas_cumprod(T), D.make_timesteps(10), pred,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("pred", ["v", "eps", "x0"])
def test_ddim_parity(pred, eta):
    net, x = ToyNet(), _x_init()
    sch = diffusers.DDIMScheduler(
        beta_schedule="squaredcos_cap_v2",
        prediction_type=DIFFUSERS_PRED[pred],
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    sch.set_timesteps(20)
    ref = _reference(sch, net, x, {"eta": eta, "generator": torch.Generator().manual_seed(3)})
    ours = D.sample_ddim(
        net, x, D.cosine_alphas_cumprod(T), D.make_timesteps(20), pred, eta=eta,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    scale = ref.abs().max().clamp(min=1)
    torch.testing.assert_close(ours / scale, ref / scale, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("pred", ["v", "eps"])
def test_dpmpp_2m_parity(pred, steps):
    net, x = ToyNet(), _x_init()
    sch = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="squaredcos_cap_v2",
        prediction_type=DIFFUSERS_PRED[pred],
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        thresholding=False,
        timestep_spacing="trailing",
    )
    sch.set_timesteps(steps)
    assert sch.timesteps.tolist() == D.make_timesteps(steps).tolist()
    ref = _reference(sch, net, x)
    ours = D.sample_dpmpp_2m(net, x, D.cosine_alphas_cumprod(T), D.make_timesteps(steps), pred)
    scale = ref.abs().max().clamp(min=1)
    torch.testing.assert_close(ours / scale, ref / scale, rtol=1e-5, atol=1e-5)


def test_sample_dispatch_and_bad_name():
    net, x = ToyNet(), _x_init()
    ac = D.cosine_alphas_cumprod(T)
    for name in D.SAMPLERS:
        out = D.sample(name, net, x, ac, 4, "v", generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="sampler"):
        D.sample("euler", net, x, ac, 4)


class Recorder(nn.Module):
    """Records every call; output depends on x, t and the condition."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, c):
        self.calls.append((x.clone(), t.clone(), c.clone()))
        return x * 0.5 + t.float()[:, None] / 1000 + c


def test_guidance_semantics():
    x, t = torch.randn(3, 4), torch.tensor([999, 500, 10])
    c, null = torch.randn(3, 4), torch.full((1, 4), -7.0)
    rec = Recorder()
    # scale 1 is the conditional pass alone, and never touches the null condition
    out1 = D.guided(rec, 1.0, {"c": null})(x, t, c=c)
    assert torch.equal(out1, rec(x, t, c))
    assert all(not torch.equal(call[2], null.expand(3, 4)) for call in rec.calls)
    # scale s: one batched call; the unconditional half keeps x_t and t, only c is nulled
    rec.calls.clear()
    out = D.guided(rec, 3.0, {"c": null})(x, t, c=c)
    assert len(rec.calls) == 1
    xb, tb, cb = rec.calls[0]
    assert torch.equal(xb[:3], x) and torch.equal(xb[3:], x)
    assert torch.equal(tb[:3], t) and torch.equal(tb[3:], t)
    assert torch.equal(cb[:3], c) and torch.equal(cb[3:], null.expand(3, 4))
    out_c, out_u = rec(x, t, c), rec(x, t, null.expand(3, 4))
    torch.testing.assert_close(out, out_u + 3.0 * (out_c - out_u))
