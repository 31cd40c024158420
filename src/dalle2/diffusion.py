"""Gaussian diffusion shared by the prior, the decoder and the upsampler.

Layering (after k-diffusion): a raw network ``net(x_t, t, **cond)``; :class:`Objective`, the one training
loss of the prior, the decoder and the upsampler (schedule, parameterization, Min-SNR weighting); samplers,
plain functions that carry no state between calls. Classifier-free guidance is :func:`guided`, a wrapper
around the model call that batches the conditional and the unconditional pass.

Notation: ``alpha_bar`` = alphas_cumprod, ``alpha = sqrt(alpha_bar)``, ``sigma = sqrt(1 - alpha_bar)``,
``x_t = alpha * x0 + sigma * eps`` (Ho et al. 2020, eq. 4) and ``v = alpha * eps - sigma * x0``
(Salimans & Ho 2022, sec. 4). Integer timesteps ``t`` in ``[0, T)`` index the training schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dalle2.errors import InvalidConfigError
from dalle2.presets import SAMPLERS  # noqa: F401  (re-exported: dalle2.diffusion.SAMPLERS)

PREDICTIONS = ("eps", "v", "x0")

ModelFn = Callable[..., Tensor]


# --------------------------------------------------------------------------- schedule


def cosine_alphas_cumprod(num_train_timesteps: int = 1000, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17), discretised exactly like diffusers'
    ``squaredcos_cap_v2``: betas from alpha_bar(t) with s = 0.008, capped at ``max_beta``, float32."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    T = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    betas_t = torch.tensor(betas, dtype=torch.float32)
    return torch.cumprod(1.0 - betas_t, dim=0)


def make_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> Tensor:
    """Descending sampling timesteps with *trailing* spacing (Lin et al. 2023, table 2): the first step
    is always t = T - 1, so sampling starts from the fully noised end of the schedule."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise InvalidConfigError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    ratio = num_train_timesteps / num_steps
    ts = torch.arange(num_train_timesteps, 0, -ratio, dtype=torch.float64).round().long() - 1
    return ts


def _bcast(a: Tensor, x: Tensor) -> Tensor:
    """Per-sample scalars (B,) -> (B, 1, ..., 1) broadcastable against x."""
    return a.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)  # (B,) -> (B, 1, ..., 1) as x


def alpha_sigma(alphas_cumprod: Tensor, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha_t, sigma_t) for integer timesteps t (B,), shaped to broadcast against x."""
    ab = alphas_cumprod.to(x.device)[t.to(x.device).long()]
    return _bcast(ab.sqrt(), x), _bcast((1 - ab).sqrt(), x)


def q_sample(alphas_cumprod: Tensor, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Forward process q(x_t | x0) = N(alpha_t x0, sigma_t^2 I) (Ho et al. 2020, eq. 4)."""
    alpha, sigma = alpha_sigma(alphas_cumprod, t, x0)
    return alpha * x0 + sigma * noise


# --------------------------------------------------------------------------- parameterization


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (x_t - alpha * x0) / sigma


def v_from_x0_eps(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return alpha * eps - sigma * x0


def x0_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return alpha * x_t - sigma * v


def eps_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return alpha * v + sigma * x_t


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise InvalidConfigError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def check_snr_weighting(min_snr_gamma: float | None, snr_floor: float) -> None:
    """The SNR weight's clamp must be a range: 0 <= snr_floor <= min_snr_gamma (when there is a gamma)."""
    if snr_floor < 0 or (min_snr_gamma is not None and snr_floor > min_snr_gamma):
        raise InvalidConfigError(f"snr_floor must be in [0, min_snr_gamma], got {snr_floor}")


def to_x0_eps(out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, prediction: str) -> tuple[Tensor, Tensor]:
    """Convert a model output of the given parameterization to (x0, eps) at the same x_t."""
    _check_prediction(prediction)
    if prediction == "eps":
        return x0_from_eps(x_t, out, alpha, sigma), out
    if prediction == "v":
        return x0_from_v(x_t, out, alpha, sigma), eps_from_v(x_t, out, alpha, sigma)
    return out, eps_from_x0(x_t, out, alpha, sigma)


def target(x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor, prediction: str) -> Tensor:
    """Regression target of the parameterization: eps, v or x0."""
    _check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "v":
        return v_from_x0_eps(x0, noise, alpha, sigma)
    return x0


def mse_per_sample(pred: Tensor, tgt: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
    """Per-sample mean squared error, shape (B,); ``pixel_weight`` (broadcastable to ``pred``) makes it the
    weighted mean over each sample's elements."""
    err = F.mse_loss(pred, tgt, reduction="none")
    if pixel_weight is None:
        return err.flatten(1).mean(1)  # (B, ...) -> (B,)
    w = pixel_weight.expand_as(err)
    return (err * w).flatten(1).sum(1) / w.flatten(1).sum(1)  # (B, ...) -> (B,)


def foreground_mask(x0: Tensor, threshold: float = 0.1) -> Tensor:
    """(B, 1, H, W) mask, 1 where a pixel of the clean image differs from the image's median colour by more
    than ``threshold`` (in [-1, 1] units, any channel): the objects of a scene on a plain background (the
    median colour is the background there, and the dominant colour in general)."""
    median = x0.flatten(2).median(dim=2).values[:, :, None, None]  # (B, C, HW) -> (B, C, 1, 1)
    return ((x0 - median).abs().amax(1, keepdim=True) > threshold).to(x0.dtype)


class Objective(nn.Module):
    """The one training objective of every diffusion model here (prior, decoder, upsampler).

    Owns the cosine schedule (``alphas_cumprod``, derived from the config, never saved), the
    parameterization (eps / v / x0) and the per-sample weighting: uniform timesteps, the MSE on the
    parameterization's target (Ho et al. 2020, eq. 14 for eps), optionally times the Min-SNR-gamma weight
    (Hang et al. 2023), written for each target so that every prediction gets the same weight in x0 terms:
    min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) for x0.
    ``snr_floor`` raises the x0-space weight to at least that value, so the SNR is clamped to
    [snr_floor, gamma]: floor 1 is Salimans & Ho's "truncated SNR" weighting (2022, sec. 4), which keeps
    weight 1 on the high-noise steps where Min-SNR alone gives them only ~SNR.
    Randomness comes from ``generator`` or, without one, the global torch RNG (the trainer saves it).
    """

    def __init__(
        self,
        prediction: str = "eps",
        num_train_timesteps: int = 1000,
        min_snr_gamma: float | None = None,
        snr_floor: float = 0.0,
    ):
        super().__init__()
        _check_prediction(prediction)
        check_snr_weighting(min_snr_gamma, snr_floor)
        self.prediction = prediction
        self.num_train_timesteps = num_train_timesteps
        self.min_snr_gamma = min_snr_gamma
        self.snr_floor = float(snr_floor)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(num_train_timesteps), persistent=False)

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Training timesteps t (B,) uniform in [0, T) and noise shaped as ``x0``, in this order."""
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        return t, noise

    def noised(self, x0: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x_t, alpha_t, sigma_t), the last two shaped to broadcast against ``x0``."""
        alpha, sigma = alpha_sigma(self.alphas_cumprod, t, x0)
        return alpha * x0 + sigma * noise, alpha, sigma

    def weight(self, t: Tensor) -> Tensor:
        """Per-sample loss weight (B,): 1, or the SNR clamped to [snr_floor, gamma] in x0 terms, expressed
        for this parameterization's target."""
        if not self.weighted:
            return torch.ones(t.shape, device=t.device)
        ab = self.alphas_cumprod.to(t.device)[t]
        snr = ab / (1 - ab)
        clamped = snr.clamp(min=self.snr_floor, max=self.min_snr_gamma)
        return {"v": clamped / (snr + 1), "eps": clamped / snr, "x0": clamped}[self.prediction]

    def loss(self, out: Tensor, x0: Tensor, noise: Tensor, t: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        """Per-sample weighted loss (B,) of the network output ``out`` at (t, noise); ``pixel_weight``
        (broadcastable to ``out``) makes each sample's MSE a weighted mean over its elements."""
        alpha, sigma = alpha_sigma(self.alphas_cumprod, t, x0)
        per_sample = mse_per_sample(out.float(), target(x0, noise, alpha, sigma, self.prediction), pixel_weight)
        if self.weighted:
            per_sample = per_sample * self.weight(t).to(per_sample)
        return per_sample

    @property
    def weighted(self) -> bool:
        """False for the plain MSE on the target (no gamma, no floor)."""
        return self.min_snr_gamma is not None or self.snr_floor > 0


# --------------------------------------------------------------------------- guidance


def guided(model_fn: ModelFn, scale: float, null_cond: Mapping[str, Tensor] | None = None) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): out_u + scale * (out_c - out_u).

    Both passes run as one batch of 2B. The unconditional half sees the *same* x_t and t; only the
    conditions named in ``null_cond`` are replaced by their null values (broadcast over the batch).
    Conditions not in ``null_cond`` are passed unchanged to both halves. Scale 1 is the conditional pass
    alone and skips the unconditional one."""
    null_cond = dict(null_cond or {})

    def fn(x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        if scale == 1.0:
            return model_fn(x, t, **cond)
        missing = set(null_cond) - set(cond)
        if missing:
            raise KeyError(f"null conditions {sorted(missing)} have no conditional counterpart")
        b = x.shape[0]
        both: dict[str, Tensor] = {}
        for k, c in cond.items():
            u = null_cond.get(k, c)
            u = u.expand(b, *c.shape[1:]) if u.shape[0] != b else u
            both[k] = torch.cat([c, u.to(device=c.device, dtype=c.dtype)])  # (2B, ...); null may be on CPU
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), **both)  # (2B, ...)
        out_c, out_u = out.chunk(2)
        return out_u + scale * (out_c - out_u)

    return fn


# --------------------------------------------------------------------------- samplers


def _t_batch(t: Tensor, x: Tensor) -> Tensor:
    return t.to(x.device).long().expand(x.shape[0])


def _ab(alphas_cumprod: Tensor, t: int) -> Tensor:
    """alpha_bar at t; t < 0 means 'before the first training step', alpha_bar = 1."""
    return alphas_cumprod[t] if t >= 0 else torch.tensor(1.0, dtype=alphas_cumprod.dtype)


def _steps(alphas_cumprod: Tensor, timesteps: Sequence[int] | Tensor) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """(i, t, alpha_bar_t, alpha_bar_s) for each step of a sampler from t to s, the next of ``timesteps``
    (s = -1 after the last: alpha_bar_s = 1)."""
    ac = alphas_cumprod.cpu()
    ts = [int(t) for t in timesteps]
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        yield i, t, _ab(ac, t), _ab(ac, s)


def _predict(
    model_fn: ModelFn,
    x: Tensor,
    t: int,
    alpha: Tensor,
    sigma: Tensor,
    prediction: str,
    extra_args: Mapping[str, Tensor],
    i: int,
    callback: Callable[[int, Tensor, Tensor], None] | None,
) -> tuple[Tensor, Tensor]:
    """(x0, eps) from one model call at x_t = ``x``, integer timestep ``t`` (alpha_t, sigma_t as given);
    then ``callback(i, x_t, x0)``, if any."""
    out = model_fn(x, _t_batch(torch.tensor(t), x), **extra_args)
    x0, eps = to_x0_eps(out, x, alpha, sigma, prediction)
    if callback is not None:
        callback(i, x, x0)
    return x0, eps


@torch.no_grad()
def sample_ddpm(
    model_fn: ModelFn,
    x: Tensor,
    alphas_cumprod: Tensor,
    timesteps: Sequence[int] | Tensor,
    prediction: str = "eps",
    extra_args: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Ancestral sampling with the posterior q(x_s | x_t, x0) (Ho et al. 2020, eqs. 6-7, algorithm 2),
    fixed small variance, over any descending subsequence of timesteps. One fresh N(0, I) draw from
    ``generator`` per step except the last."""
    extra_args = dict(extra_args or {})
    for i, t, ab_t, ab_s in _steps(alphas_cumprod, timesteps):
        alpha_ts = ab_t / ab_s  # effective alpha between s and t
        beta_t = 1 - alpha_ts
        x0, _ = _predict(model_fn, x, t, ab_t.sqrt(), (1 - ab_t).sqrt(), prediction, extra_args, i, callback)
        # posterior mean, eq. 7
        mean = (ab_s.sqrt() * beta_t / (1 - ab_t)) * x0 + (alpha_ts.sqrt() * (1 - ab_s) / (1 - ab_t)) * x
        if t > 0:
            var = ((1 - ab_s) / (1 - ab_t) * beta_t).clamp(min=1e-20)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            mean = mean + var.sqrt() * noise
        x = mean
    return x


@torch.no_grad()
def sample_ddim(
    model_fn: ModelFn,
    x: Tensor,
    alphas_cumprod: Tensor,
    timesteps: Sequence[int] | Tensor,
    prediction: str = "eps",
    extra_args: Mapping[str, Tensor] | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12, sigma from eq. 16 scaled by ``eta``); the last step goes to
    alpha_bar = 1. With trailing timesteps this is the schedule that avoids the 'DDIM worse than full
    sampling' pitfall. Note: the previous timestep is the next one in ``timesteps`` (diffusers uses
    t - T // steps, identical whenever steps divides T)."""
    extra_args = dict(extra_args or {})
    for i, t, ab_t, ab_s in _steps(alphas_cumprod, timesteps):
        x0, eps = _predict(model_fn, x, t, ab_t.sqrt(), (1 - ab_t).sqrt(), prediction, extra_args, i, callback)
        std = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
        x_new = ab_s.sqrt() * x0 + (1 - ab_s - std**2).sqrt() * eps
        if eta > 0:
            x_new = x_new + std * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = x_new
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model_fn: ModelFn,
    x: Tensor,
    alphas_cumprod: Tensor,
    timesteps: Sequence[int] | Tensor,
    prediction: str = "eps",
    extra_args: Mapping[str, Tensor] | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """DPM-Solver++(2M) in data prediction (Lu et al. 2022b, algorithm 2, midpoint form), ending at
    sigma = 0. First and last steps are first order (the last one returns the x0 prediction), as in
    diffusers with ``lower_order_final`` and ``final_sigmas_type='zero'``."""
    extra_args = dict(extra_args or {})
    ts = [int(t) for t in timesteps]
    ac = alphas_cumprod.cpu()
    # VE sigmas of the visited timesteps (float32, as diffusers), then 0 at the end
    sig = ((1 - ac) / ac) ** 0.5
    sigmas = torch.cat([sig[ts], torch.zeros(1)])
    alphas = 1 / (sigmas**2 + 1) ** 0.5  # VP alpha_t
    sigmas_vp = sigmas * alphas  # VP sigma_t
    lambdas = torch.log(alphas) - torch.log(sigmas_vp)  # half log-SNR; +inf at the end
    n = len(ts)
    x0_prev: Tensor | None = None
    for i, t in enumerate(ts):
        x0, _ = _predict(model_fn, x, t, alphas[i], sigmas_vp[i], prediction, extra_args, i, callback)
        h = lambdas[i + 1] - lambdas[i]
        phi = torch.exp(-h) - 1.0  # -(1 - e^{-h})
        if x0_prev is None or i == n - 1:
            d = x0  # first order (= DDIM)
        else:
            r = (lambdas[i] - lambdas[i - 1]) / h
            d = x0 + 0.5 * (1.0 / r) * (x0 - x0_prev)  # midpoint correction, D0 + D1 / 2
        x = (sigmas_vp[i + 1] / sigmas_vp[i]) * x - (alphas[i + 1] * phi) * d
        x0_prev = x0
    return x


def sample(
    sampler: str,
    model_fn: ModelFn,
    x: Tensor,
    alphas_cumprod: Tensor,
    steps: int,
    prediction: str = "eps",
    extra_args: Mapping[str, Tensor] | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run one of :data:`SAMPLERS` for ``steps`` steps with trailing spacing, from noise ``x``."""
    ts = make_timesteps(steps, len(alphas_cumprod))
    if sampler == "ddpm":
        return sample_ddpm(model_fn, x, alphas_cumprod, ts, prediction, extra_args, generator)
    if sampler == "ddim":
        return sample_ddim(model_fn, x, alphas_cumprod, ts, prediction, extra_args, eta, generator)
    if sampler == "dpmpp_2m":
        return sample_dpmpp_2m(model_fn, x, alphas_cumprod, ts, prediction, extra_args)
    raise InvalidConfigError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
