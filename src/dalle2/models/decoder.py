"""Image diffusion models of the unCLIP pipeline: the decoder (z_i -> 32x32) and the upsampler (32 -> 64).

One class, :class:`ImageDiffusion`, owns a network (:class:`~dalle2.models.transformer.DiffusionTransformer`
or :class:`~dalle2.models.unet.UNet`), the noise schedule and parameterization (from :mod:`dalle2.diffusion`,
shared with the prior), the training loss, guidance and sampling, and saving / loading
(``config.json`` + ``model.safetensors``).

* Decoder (paper sec. 2.1): conditioned on the CLIP image embedding z_i and the caption's token
  encodings; z_i dropped 10% and the caption 50% of the time in training; guided sampling pushes away
  from the fully unconditional pass (both dropped), on the same x_t and t.
* Upsampler (paper sec. 2.1, "Decoder"): convolution-only UNet conditioned on the low-resolution image,
  which is corrupted in training (Gaussian blur, then noise at a random diffusion step; the step is an
  input) and noised at a fixed small step in sampling; no caption, no guidance, few steps.

Default parameterization: v prediction with the cosine schedule and fixed variance; the loss is the plain
per-sample MSE on v (x0-space weight SNR + 1, so the high-noise steps that decide layout and colour keep
weight about 1). ``min_snr_gamma`` switches to Min-SNR weighting (Hang et al. 2023: min(SNR, gamma) /
(SNR + 1) for v). It gives the high-noise steps weight ~SNR: at 1,000 steps of the ``cpu`` preset it looked
worse (colours right, no object layout), but at the preset's 2,000 steps it gave quick-eval FD 9.5 against
16.4 at the same faithfulness, so the ``cpu`` preset's decoder uses gamma 5. ``snr_floor`` 1 (truncated SNR,
Salimans & Ho 2022) gives those steps weight 1 again under gamma's cap; measured neutral on faithfulness and
colour binding in two continuations of the bundled decoder (docs/results.md, "Weight on the high-noise
steps: truncated SNR"), so the preset keeps 0.
``foreground_weight`` adds weight 1 + w * alpha_bar_t to the pixels off each image's median colour (the
objects of a plain-background scene), see :class:`DiffusionConfig`; with ``foreground_source="prediction"``
the mask comes from the model's own detached x0 estimate instead, which keeps the loss's minimiser unbiased.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dalle2 import diffusion
from dalle2.coerce import check_fields
from dalle2.errors import InvalidConfigError
from dalle2.folder_format import CONFIG_FILE, FolderError, load_component_config, load_weights, save_component
from dalle2.models.transformer import DiffusionTransformer, TransformerConfig
from dalle2.models.unet import UNet, UNetConfig

__all__ = ["DiffusionConfig", "ImageDiffusion", "blur"]

ARCHES = ("transformer", "unet")


@dataclass
class DiffusionConfig:
    """What an :class:`ImageDiffusion` is: its role, network and diffusion settings (config.json)."""

    role: str = "decoder"  # "decoder" | "upsampler"
    arch: str = "transformer"  # "transformer" | "unet"
    net: dict[str, Any] = field(default_factory=dict)  # TransformerConfig / UNetConfig fields
    prediction: str = "v"
    num_train_timesteps: int = 1000
    min_snr_gamma: float | None = None  # None: plain MSE on the prediction target (see the module docstring)
    # lower clamp of the SNR weight in x0 terms (0: Min-SNR alone; 1: Salimans & Ho's truncated SNR, which keeps
    # weight 1 on the high-noise steps where layout and colour binding are decided); <= min_snr_gamma
    snr_floor: float = 0.0
    # extra loss weight of the objects (pixels off the image's median colour): 1 + this * alpha_bar_t there, 1
    # elsewhere. Objects cover ~5% of a shapes image, so in the plain MSE their colour and outline, which the
    # prompt is about, are a few percent of the loss. Scaled by alpha_bar_t because an x0-dependent weight
    # biases the model towards foreground where x0 is uncertain given x_t: at constant weight 20 the
    # high-noise predictions filled whole images with object colour. 0: the plain MSE.
    foreground_weight: float = 0.0
    # where the foreground mask comes from: "target" (the clean image x0; weight 1 + w * alpha_bar_t) or
    # "prediction" (the model's own x0 estimate, detached: a function of x_t, t and the condition only, so each
    # pixel's minimiser stays E[x0 | x_t] and the weight can be a constant 1 + w at every noise level)
    foreground_source: str = "target"
    image_drop_prob: float = 0.1  # decoder: z_i zeroed (paper: 10%)
    text_drop_prob: float = 0.5  # decoder: caption dropped (paper: 50%)
    low_res_size: int = 0  # upsampler: input resolution
    max_aug_level: int = 250  # upsampler: training noise level of the low-res input, uniform in [0, this)
    sample_aug_level: int = 50  # upsampler: noise level the low-res input gets in sampling
    blur_sigma: tuple[float, float] = (0.4, 0.6)  # upsampler: Gaussian blur sigma range (in low-res pixels)
    sampler: str = "ddim"
    sample_steps: int = 25
    guidance_scale: float = 3.0
    # decoder: what the unconditional pass of guidance drops: both conditions (GLIDE / the paper: trained on
    # 10% x 50% = 5% of the steps), or the caption only (z_i kept: trained on 50% of the steps)
    guidance_drops: tuple[str, ...] = ("image", "text")
    eta: float = 0.0

    def __post_init__(self) -> None:
        if self.role not in ("decoder", "upsampler"):
            raise InvalidConfigError(f"role must be decoder or upsampler, got {self.role!r}")
        if self.arch not in ARCHES:
            raise InvalidConfigError(f"arch must be one of {ARCHES}, got {self.arch!r}")
        if self.prediction not in diffusion.PREDICTIONS:
            raise InvalidConfigError(f"prediction must be one of {diffusion.PREDICTIONS}, got {self.prediction!r}")
        if self.sampler not in diffusion.SAMPLERS:
            raise InvalidConfigError(f"sampler must be one of {diffusion.SAMPLERS}, got {self.sampler!r}")
        if not 1 <= self.sample_steps <= self.num_train_timesteps:
            raise InvalidConfigError(
                f"sample_steps must be in [1, {self.num_train_timesteps}], got {self.sample_steps}"
            )
        if not 0 <= self.image_drop_prob < 1 or not 0 <= self.text_drop_prob < 1:
            raise InvalidConfigError("image_drop_prob and text_drop_prob must be in [0, 1)")
        diffusion.check_snr_weighting(self.min_snr_gamma, self.snr_floor)
        if not 0 <= self.foreground_weight <= 1000:
            raise InvalidConfigError(f"foreground_weight must be in [0, 1000], got {self.foreground_weight}")
        if self.foreground_source not in ("target", "prediction"):
            raise InvalidConfigError(f"foreground_source must be target or prediction, got {self.foreground_source!r}")
        if self.guidance_scale < 0 or self.eta < 0:
            raise InvalidConfigError("guidance_scale and eta must be >= 0")
        if self.role == "upsampler" and self.low_res_size < 1:
            raise InvalidConfigError("an upsampler needs low_res_size")
        self.blur_sigma = tuple(float(s) for s in self.blur_sigma)  # type: ignore[assignment]
        self.guidance_drops = tuple(str(d) for d in self.guidance_drops)
        if not self.guidance_drops or not set(self.guidance_drops) <= {"image", "text"}:
            raise InvalidConfigError(f"guidance_drops must name image and/or text, got {list(self.guidance_drops)}")
        self.net_config()  # validate the network's keys now

    def net_config(self) -> TransformerConfig | UNetConfig:
        return (TransformerConfig if self.arch == "transformer" else UNetConfig).from_dict(dict(self.net))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidConfigError(f"unknown keys: {sorted(unknown)}")
        return cls(**check_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-sample Gaussian blur (5x5 kernel, reflect padding); sigma (B,) in pixels."""
    b, c, h, w = x.shape
    r = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma.to(x)[:, None].clamp(min=1e-3) ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)  # (B, 5)
    kernel = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, 0)[:, None]  # (B*C, 1, 5, 5)
    # (B, C, H, W) -> (1, B*C, H, W), padded to (1, B*C, H+4, W+4): a convolution group each
    y = F.pad(x.reshape(1, b * c, h, w), (2, 2, 2, 2), mode="reflect")
    return F.conv2d(y, kernel, groups=b * c).reshape(b, c, h, w)  # (1, B*C, H, W) -> (B, C, H, W)


class ImageDiffusion(nn.Module):
    """A decoder or upsampler: ``forward(x_t, t, **cond)`` is the raw network output."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = c = config
        net_config = c.net_config()
        self.net: nn.Module = DiffusionTransformer(net_config) if c.arch == "transformer" else UNet(net_config)  # type: ignore[arg-type]
        self.objective = diffusion.Objective(c.prediction, c.num_train_timesteps, c.min_snr_gamma, c.snr_floor)

    @property
    def alphas_cumprod(self) -> Tensor:
        """The training schedule's alpha_bar (T,), owned by :attr:`objective`."""
        return self.objective.alphas_cumprod

    @property
    def image_size(self) -> int:
        return int(self.config.net.get("image_size", 32))

    @property
    def reads_token_ids(self) -> bool:
        """True when the network encodes the caption itself: ``text_tokens`` are token ids, not encodings."""
        return bool(self.config.net.get("caption_layers", 0))

    @property
    def self_conditions(self) -> bool:
        """True when the network also reads an x0 estimate (``net.self_condition``, Chen et al. 2022)."""
        return bool(self.config.net.get("self_condition", False))

    def caption_inputs(
        self, clip: Any, captions: list[str], hidden: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(text_tokens, text_mask)`` for ``captions``: token ids from ``clip``'s tokenizer when the network
        encodes the caption itself (GLIDE's text encoder, as the paper's decoder), else CLIP's token encodings
        (``hidden`` / ``mask`` when the caller already has them, e.g. from encoding the prompt for the prior)."""
        if self.reads_token_ids:
            ids, ids_mask = clip.tokenize(captions)
            return ids, ids_mask.bool()
        if hidden is None or mask is None:
            _, hidden, mask = clip.encode_prompts(captions)
        return hidden.float(), mask.bool()

    def forward(self, x_t: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        return self.net(x_t, t, **cond)

    # -- training ------------------------------------------------------------------------------------

    def corrupt_low_res(self, low_res: Tensor, level: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The upsampler's conditioning input: noise ``low_res`` to diffusion step ``level`` (B,)."""
        noise = torch.randn(low_res.shape, generator=generator).to(low_res)
        return diffusion.q_sample(self.alphas_cumprod, low_res, level.to(low_res.device), noise)

    def loss(self, model: nn.Module, x0: Tensor, **cond: Tensor) -> Tensor:
        """Mean weighted loss of a batch; ``model`` is this module or its prepared (DDP) wrapper, so the
        forward pass goes through it. Randomness comes from the global torch RNG (saved by the trainer)."""
        c = self.config
        b = x0.shape[0]
        t, noise = self.objective.draw(x0)
        if c.role == "decoder":
            cond["drop_image"] = (torch.rand(b) < c.image_drop_prob).to(x0.device)
            cond["drop_text"] = (torch.rand(b) < c.text_drop_prob).to(x0.device)
        else:
            low = cond.pop("low_res")
            sigma = torch.empty(b).uniform_(*c.blur_sigma)
            level = torch.randint(0, max(1, c.max_aug_level), (b,))
            cond["low_res"] = self.corrupt_low_res(blur(low, sigma.to(low)), level)
            cond["noise_level"] = level.to(x0.device)
        x_t, alpha, sigma_t = self.objective.noised(x0, t, noise)
        if self.self_conditions and torch.rand(()) < 0.5:  # half the batches: first its own x0 estimate, no grad
            with torch.no_grad():
                first = model(x_t, t, **cond)
            cond["self_cond"] = self._self_cond_estimate(first, x_t, alpha, sigma_t)
        out = model(x_t, t, **cond)
        weight_map = None
        if c.foreground_weight and c.foreground_source == "target":  # 1 + w * alpha_bar_t on the objects
            weight_map = 1 + c.foreground_weight * alpha.pow(2) * diffusion.foreground_mask(x0)
        elif c.foreground_weight:  # 1 + w on what the model itself draws as objects (unbiased, see the config)
            x0_hat, _ = diffusion.to_x0_eps(out.detach().float(), x_t, alpha, sigma_t, c.prediction)
            weight_map = 1 + c.foreground_weight * diffusion.foreground_mask(x0_hat)
        per_sample = self.objective.loss(out, x0, noise, t, weight_map)
        return per_sample.mean()

    # -- sampling ------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        noise: Tensor,
        *,
        image_embed: Tensor | None = None,
        text_tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        low_res: Tensor | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        eta: float | None = None,
        generator: torch.Generator | None = None,
        inpaint: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Images in [-1, 1] from ``noise`` (B, C, H, W). Decoder: guided on (image_embed, caption) with
        the fully dropped pass as the unconditional one. Upsampler: conditioned on ``low_res`` (B, C, h, w)
        noised at ``sample_aug_level``. ``inpaint=(known, keep)``: at every step the pixels where ``keep``
        is 1 are replaced by ``known`` noised to the current step (RePaint-style replacement)."""
        c = self.config
        steps = steps or c.sample_steps
        sampler = sampler or c.sampler
        scale = c.guidance_scale if guidance_scale is None else guidance_scale
        eta = c.eta if eta is None else eta
        b = noise.shape[0]
        device = noise.device
        cond: dict[str, Tensor] = {}
        null: dict[str, Tensor] = {}
        if c.role == "decoder":
            if image_embed is None:
                raise ValueError("the decoder needs image_embed")
            cond["image_embed"] = image_embed.to(noise)
            if text_tokens is not None:  # encodings (float) or, for a decoder with its own encoder, token ids
                cond["text_tokens"] = text_tokens.to(device) if self.reads_token_ids else text_tokens.to(noise)
                cond["text_mask"] = (
                    text_mask.to(device) if text_mask is not None else torch.ones(text_tokens.shape[:2], device=device)
                ).bool()
            cond["drop_image"] = torch.zeros(b, dtype=torch.bool, device=device)
            cond["drop_text"] = torch.zeros(b, dtype=torch.bool, device=device)
            null = {f"drop_{name}": torch.ones(1, dtype=torch.bool) for name in c.guidance_drops}
            if "text_tokens" not in cond:  # no caption at all: mask every (absent) caption token
                cfg = self.net.config
                if self.reads_token_ids:
                    cond["text_tokens"] = torch.zeros(b, 1, dtype=torch.long, device=device)
                    cond["text_mask"] = torch.zeros(b, 1, dtype=torch.bool, device=device)
                elif getattr(cfg, "context_dim", 0):
                    cond["text_tokens"] = torch.zeros(b, 1, cfg.context_dim, device=device)
                    cond["text_mask"] = torch.zeros(b, 1, dtype=torch.bool, device=device)
        else:
            if low_res is None:
                raise ValueError("the upsampler needs low_res")
            level = torch.full((b,), c.sample_aug_level, dtype=torch.long)
            g = torch.Generator().manual_seed(0) if generator is None else generator
            cond["low_res"] = self.corrupt_low_res(low_res.to(noise), level, g)
            cond["noise_level"] = level.to(device)
            scale = 1.0
        model_fn = diffusion.guided(self, scale, null)
        if self.self_conditions:
            model_fn = self._self_conditioning(model_fn)
        if inpaint is not None:
            model_fn = self._inpainting(model_fn, inpaint, noise.shape, generator)
        x = diffusion.sample(sampler, model_fn, noise, self.alphas_cumprod, steps, c.prediction, cond, eta, generator)
        if inpaint is not None:
            known, keep = inpaint
            x = keep * known.to(x) + (1 - keep) * x
        return x.clamp(-1, 1)

    def _self_conditioning(self, model_fn):
        """Wrap the (guided) model call so that each step reads the previous step's x0 estimate (zeros at the
        first), in both guidance passes, as in Chen et al. 2022 (algorithm 2). Works with every sampler: each
        calls the model once per step, in order."""
        previous: list[Tensor] = []

        def fn(x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
            estimate = previous[-1] if previous else torch.zeros_like(x)
            out = model_fn(x, t, self_cond=estimate, **cond)
            alpha, sigma = diffusion.alpha_sigma(self.alphas_cumprod, t, x)
            previous[:] = [self._self_cond_estimate(out, x, alpha, sigma)]
            return out

        return fn

    def _self_cond_estimate(self, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The x0 estimate a self-conditioned network reads next: the same in training and sampling."""
        return diffusion.to_x0_eps(out.float(), x_t, alpha, sigma, self.config.prediction)[0].clamp(-1, 1)

    def _inpainting(self, model_fn, inpaint: tuple[Tensor, Tensor], shape, generator):
        """Wrap the model call so that it sees the known region noised to the current t."""
        known, keep = inpaint
        fixed_noise = torch.randn(shape, generator=generator).to(known)

        def fn(x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
            noised = diffusion.q_sample(self.alphas_cumprod, known.to(x), t, fixed_noise.to(x))
            return model_fn(keep * noised + (1 - keep) * x, t, **cond)

        return fn

    # -- save / load ---------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (:func:`dalle2.folder_format.save_component`)."""
        return save_component(folder, self, self.config.to_dict(), "ImageDiffusion")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ImageDiffusion:
        """Load a saved decoder / upsampler; any problem is a FolderError naming the file."""
        d = Path(folder)
        meta = load_component_config(d, "ImageDiffusion")
        try:
            model = cls(DiffusionConfig.from_dict(meta))
        except (TypeError, ValueError) as error:
            raise FolderError(f"{d / CONFIG_FILE}: {error}") from None
        load_weights(model, d)
        return model.eval()
