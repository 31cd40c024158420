"""The unCLIP diffusion prior p(z_i | y) (Ramesh et al. 2022, sec. 2.1).

A decoder-only causal Transformer (``diffusers.PriorTransformer``) over the sequence
[projected text token encodings, z_t, timestep embedding, noised z_i, learned query]; the output at the
query predicts the clean, standardised image embedding z_i (x0 parameterization, MSE loss).

Classifier-free guidance: during training the text conditions (token encodings and z_t) are replaced by
learned null embeddings with probability ``cond_drop_prob``; when sampling, the unconditional pass keeps
the noised z_i and the timestep and swaps only those conditions (see :func:`dalle2.diffusion.guided`).

Image embeddings are standardised per dimension with saved statistics (:class:`EmbeddingStats`), and
never clamped: clamping scaled embeddings to [-1, 1] destroys them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import PriorTransformer
from torch import Tensor, nn

from dalle2 import diffusion
from dalle2.coerce import check_fields
from dalle2.errors import InvalidConfigError
from dalle2.folder_format import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    FolderError,
    load_component_config,
    load_tensors,
    load_weights,
    save_component,
    write_tensors_atomic,
)

STATS_FILE = "embedding_stats.safetensors"


@dataclass
class PriorConfig:
    """Sizes and defaults of the prior. ``embed_dim`` is CLIP's joint embedding size, ``text_width``
    the width of the text encoder's token encodings, ``max_text_len`` their number."""

    embed_dim: int = 64
    text_width: int = 64
    max_text_len: int = 16
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int = 32
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    cond_drop_prob: float = 0.1
    sampler: str = "dpmpp_2m"
    sample_steps: int = 32
    guidance_scale: float = 1.0
    num_candidates: int = 2

    def __post_init__(self) -> None:
        if self.sampler not in diffusion.SAMPLERS:
            raise InvalidConfigError(f"sampler must be one of {diffusion.SAMPLERS}, got {self.sampler!r}")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise InvalidConfigError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if self.num_candidates < 1:
            raise InvalidConfigError(f"num_candidates must be >= 1, got {self.num_candidates}")

    @classmethod
    def from_dict(cls, d: dict) -> PriorConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidConfigError(f"unknown PriorConfig fields: {sorted(unknown)}")
        return cls(**check_fields(cls, d))


def prior_config(preset: str, **overrides) -> PriorConfig:
    """The prior of ``preset`` (:data:`dalle2.presets.STAGE_PRESETS`) with ``overrides``."""
    from dalle2.presets import STAGE_PRESETS

    presets = STAGE_PRESETS["prior"]
    if preset not in presets:
        raise InvalidConfigError(f"unknown prior preset {preset!r}; choose one of {sorted(presets)}")
    return PriorConfig.from_dict({**asdict(PriorConfig(**presets[preset]["model"])), **overrides})


@dataclass
class EmbeddingStats:
    """Per-dimension mean and std of CLIP image embeddings (as Karlo / Kandinsky standardise)."""

    mean: Tensor
    std: Tensor

    @classmethod
    def from_embeddings(cls, z: Tensor, eps: float = 1e-6) -> EmbeddingStats:
        z = z.detach().float()
        return cls(mean=z.mean(0), std=z.std(0).clamp(min=eps))  # floor on std, not on embeddings

    def normalize(self, z: Tensor) -> Tensor:
        return (z - self.mean.to(z)) / self.std.to(z)

    def denormalize(self, z: Tensor) -> Tensor:
        return z * self.std.to(z) + self.mean.to(z)

    def save(self, path: str | Path) -> None:
        write_tensors_atomic(path, {"mean": self.mean, "std": self.std})

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingStats:
        d = load_tensors(path)
        if "mean" not in d or "std" not in d:
            raise FolderError(f"{path}: not embedding statistics (needs the tensors mean and std)")
        return cls(mean=d["mean"], std=d["std"])


class DiffusionPrior(nn.Module):
    """``forward(x_t, t, text_embed, text_tokens, text_mask, drop)`` -> predicted clean standardised z_i."""

    def __init__(self, config: PriorConfig, stats: EmbeddingStats | None = None):
        super().__init__()
        self.config = c = config
        self.token_proj = nn.Linear(c.text_width, c.embed_dim)
        self.net = PriorTransformer(
            num_attention_heads=c.num_heads,
            attention_head_dim=c.head_dim,
            num_layers=c.num_layers,
            embedding_dim=c.embed_dim,
            num_embeddings=c.max_text_len,
            additional_embeddings=4,  # z_t, timestep, noised z_i, query
            dropout=c.dropout,
            norm_in_type="layer",
        )
        # learned null conditions for classifier-free guidance
        self.null_text_embed = nn.Parameter(torch.zeros(c.embed_dim))
        self.null_tokens = nn.Parameter(torch.zeros(c.max_text_len, c.embed_dim))
        nn.init.normal_(self.null_tokens, std=0.02)
        # derived buffers: not part of the weights file
        self.objective = diffusion.Objective("x0", c.num_train_timesteps)  # the paper's prior predicts z_i itself
        stats = stats or EmbeddingStats(torch.zeros(c.embed_dim), torch.ones(c.embed_dim))
        self.register_buffer("stats_mean", stats.mean.float().clone(), persistent=False)
        self.register_buffer("stats_std", stats.std.float().clone(), persistent=False)

    # ------------------------------------------------------------------ statistics
    @property
    def stats(self) -> EmbeddingStats:
        return EmbeddingStats(self.stats_mean, self.stats_std)

    def set_stats(self, stats: EmbeddingStats) -> None:
        self.stats_mean.copy_(stats.mean)
        self.stats_std.copy_(stats.std)

    # ------------------------------------------------------------------ network
    def _check(self, text_embed: Tensor, text_tokens: Tensor, text_mask: Tensor | None) -> Tensor:
        c = self.config
        b = text_embed.shape[0]
        if text_embed.shape != (b, c.embed_dim):
            raise ValueError(f"text_embed must be (B, {c.embed_dim}), got {tuple(text_embed.shape)}")
        if text_tokens.shape != (b, c.max_text_len, c.text_width):
            raise ValueError(
                f"text_tokens must be (B, {c.max_text_len}, {c.text_width}), got {tuple(text_tokens.shape)}"
            )
        if text_mask is None:
            text_mask = torch.ones(b, c.max_text_len, dtype=torch.bool, device=text_tokens.device)
        return text_mask.bool()

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        text_embed: Tensor,
        text_tokens: Tensor,
        text_mask: Tensor | None = None,
        drop: Tensor | None = None,
    ) -> Tensor:
        """x_t (B, D) noised standardised z_i; t (B,) int; text_embed (B, D); text_tokens (B, L, W);
        text_mask (B, L) bool; drop (B,) bool: rows whose text conditions become the null embeddings."""
        text_mask = self._check(text_embed, text_tokens, text_mask)
        tokens = self.token_proj(text_tokens)  # (B, L, D)
        if drop is not None:
            d = drop.bool().to(x_t.device)
            text_embed = torch.where(d[:, None], self.null_text_embed.to(text_embed), text_embed)
            tokens = torch.where(d[:, None, None], self.null_tokens.to(tokens), tokens)
            text_mask = text_mask | d[:, None]  # null tokens are all visible
        # the attention mask also turns on PriorTransformer's causal mask: always pass it
        out = self.net(
            hidden_states=x_t,
            timestep=t,
            proj_embedding=text_embed,
            encoder_hidden_states=tokens,
            attention_mask=text_mask,
        ).predicted_image_embedding  # (B, D)
        return out

    # ------------------------------------------------------------------ training
    @property
    def alphas_cumprod(self) -> Tensor:
        """The training schedule's alpha_bar (T,), owned by :attr:`objective`."""
        return self.objective.alphas_cumprod

    def loss(
        self,
        image_embed: Tensor,
        text_embed: Tensor,
        text_tokens: Tensor,
        text_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        model: nn.Module | None = None,
    ) -> Tensor:
        """Per-sample MSE between predicted and true clean standardised z_i (paper sec. 2.1). ``model`` is
        this module or its prepared (DDP) wrapper, so the forward pass goes through it (default: this one);
        randomness from ``generator`` or the global torch RNG (which the trainer saves: exact resume)."""
        x0 = self.stats.normalize(image_embed)
        t, noise = self.objective.draw(x0, generator)
        drop = (torch.rand(x0.shape[0], generator=generator) < self.config.cond_drop_prob).to(x0.device)
        x_t, _, _ = self.objective.noised(x0, t, noise)
        pred = (self if model is None else model)(x_t, t, text_embed, text_tokens, text_mask, drop=drop)
        return self.objective.loss(pred, x0, noise, t)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        text_embed: Tensor,
        text_tokens: Tensor,
        text_mask: Tensor | None = None,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        num_candidates: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Image embeddings (B, D) in CLIP space. Draws ``num_candidates`` per caption and keeps the one
        with the highest dot product with z_t (paper sec. 2.1 rerank). Never clamped."""
        c = self.config
        steps = steps or c.sample_steps
        sampler = sampler or c.sampler
        scale = c.guidance_scale if guidance_scale is None else guidance_scale
        k = num_candidates or c.num_candidates
        text_mask = self._check(text_embed, text_tokens, text_mask)
        b = text_embed.shape[0]
        # (B, ...) -> (B * k, ...), candidates of a caption adjacent
        rep = {
            "text_embed": text_embed.repeat_interleave(k, 0),
            "text_tokens": text_tokens.repeat_interleave(k, 0),
            "text_mask": text_mask.repeat_interleave(k, 0),
            "drop": torch.zeros(b * k, dtype=torch.bool, device=text_embed.device),
        }
        model_fn = diffusion.guided(self, scale, {"drop": torch.ones(1, dtype=torch.bool)})
        x = torch.randn(b * k, c.embed_dim, generator=generator).to(text_embed)
        z = diffusion.sample(sampler, model_fn, x, self.alphas_cumprod, steps, "x0", rep, eta, generator)
        z = self.stats.denormalize(z).view(b, k, c.embed_dim)  # (B*k, D) -> (B, k, D)
        return rerank(z, text_embed)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``embedding_stats.safetensors``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.stats.save(d / STATS_FILE)
        return save_component(d, self, asdict(self.config), "DiffusionPrior")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DiffusionPrior:
        """Load a saved prior; any problem is a FolderError naming the file."""
        d = Path(directory)
        meta = load_component_config(d, "DiffusionPrior", require=(WEIGHTS_FILE, STATS_FILE))
        try:
            config = PriorConfig.from_dict(meta)
        except (TypeError, ValueError) as error:
            raise FolderError(f"{d / CONFIG_FILE}: {error}") from None
        model = cls(config, EmbeddingStats.load(d / STATS_FILE))
        load_weights(model, d)
        return model.eval()


def rerank(candidates: Tensor, text_embed: Tensor) -> Tensor:
    """candidates (B, k, D), text_embed (B, D) -> (B, D): the candidate with the highest z_i . z_t."""
    scores = torch.einsum("bkd,bd->bk", candidates, text_embed.to(candidates))  # (B, k, D), (B, D) -> (B, k)
    best = scores.argmax(1)  # (B,)
    return candidates[torch.arange(candidates.shape[0]), best]


def _mean_cos(a: Tensor, b: Tensor) -> float:
    return F.cosine_similarity(a.float(), b.float(), dim=-1).mean().item()


@torch.no_grad()
def prior_report(
    prior: DiffusionPrior,
    image_embed: Tensor,
    text_embed: Tensor,
    text_tokens: Tensor,
    text_mask: Tensor | None = None,
    **sample_kwargs,
) -> dict[str, float]:
    """Held-out cosine similarity of the prior's z_i to the true z_i, against two references:
    ``text_baseline`` (z_t used directly as the image embedding) and ``unrelated_caption`` (prior output
    for caption A against the true z_i of caption B, B = A shifted by one)."""
    pred = prior.sample(text_embed, text_tokens, text_mask, **sample_kwargs)
    return {
        "prior": _mean_cos(pred, image_embed),
        "text_baseline": _mean_cos(text_embed, image_embed),
        "unrelated_caption": _mean_cos(pred, image_embed.roll(1, dims=0)),
        "n": float(image_embed.shape[0]),
    }
