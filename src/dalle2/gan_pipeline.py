"""The text-conditional GAN pipeline: prompt -> frozen CLIP sentence embedding s -> G(z, s) -> image, one step.

Opened by ``dalle2.load(folder)`` for folders whose ``model_index.json`` says ``"kind": "gan"`` (written by
``dalle2 train gan``). Images are RGB PIL images at the generator's resolution (grayscale models give
three equal channels). Besides generation:

* ``interpolate_noise(prompt, steps, seed)``: one prompt, the noise moved along the great circle
  (slerp) from one Gaussian draw to another, both drawn from ``seed``;
* ``interpolate_text(prompt_a, prompt_b, steps, seed)``: one noise, the sentence embedding moved by
  slerp from prompt A's to prompt B's (both are unit vectors, so every step is a valid CLIP embedding).

Everything is reproducible from ``seed``: the noise of all images is drawn before batching, so the
batch size never changes the images.

``truncation`` (BigGAN's truncation trick, Brock et al. 2019): every noise component whose magnitude
exceeds the threshold is redrawn until none does, so samples stay near the typical noise the generator
saw most; a smaller threshold gives more typical, less varied images (None: plain Gaussian noise).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dalle2.errors import Dalle2Error
from dalle2.models.gan import sentence_embeddings
from dalle2.pipeline import PipelineError, register
from dalle2.pipeline_base import PipelineBase, check_components, check_count, check_prompts, component_path, slerp

__all__ = ["GanPipeline", "sentence_embeddings", "slerp_noise", "truncated_noise"]

MAX_TRUNCATION = 10.0  # beyond this a draw is practically never redrawn: the option would do nothing


def slerp_noise(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two Gaussian noise vectors, keeping their scale (White 2016)."""
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1 + 1e-7, 1 - 1e-7).unsqueeze(-1)
    omega = torch.arccos(cos)
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def truncated_noise(count: int, dim: int, generator: torch.Generator, truncation: float | None = None) -> torch.Tensor:
    """(count, dim) standard Gaussian noise from ``generator``; with ``truncation`` t every component with
    |z| > t is redrawn (from the same generator) until none is: the truncated normal of BigGAN."""
    if truncation is not None and (
        isinstance(truncation, bool) or not isinstance(truncation, int | float) or not 0 < truncation <= MAX_TRUNCATION
    ):
        raise PipelineError(f"truncation must be a number in (0, {MAX_TRUNCATION:g}], got {truncation!r}")
    z = torch.randn(count, dim, generator=generator)
    if truncation is None:
        return z
    while True:
        outside = z.abs() > truncation
        if not outside.any():
            return z
        z[outside] = torch.randn(int(outside.sum()), generator=generator)


class GanPipeline(PipelineBase):
    """See the module docstring. Build with :meth:`from_folder` (or ``dalle2.load``)."""

    kind = "gan"

    def __init__(self, folder: Path, index: dict[str, Any], clip: Any, generator: Any) -> None:
        super().__init__(folder, index)
        self.clip, self.generator = clip, generator
        self.resolution = generator.image_size

    @classmethod
    def from_folder(cls, folder: str | Path, index: dict[str, Any] | None = None) -> GanPipeline:
        from dalle2.models.clip import ClipModel
        from dalle2.models.gan import Generator
        from dalle2.pipeline import read_index

        folder = Path(folder)
        index = index or read_index(folder)
        check_components(folder, index, ("clip", "gan"), "GAN", "`dalle2 train gan --out {folder}`")
        try:
            clip = ClipModel.load(component_path(folder, index, "clip")).requires_grad_(False).eval()
            generator = Generator.from_pretrained(component_path(folder, index, "gan")).requires_grad_(False).eval()
        except (Dalle2Error, FileNotFoundError) as error:
            raise PipelineError(str(error)) from None
        return cls(folder, index, clip, generator)

    def to(self, device: str | torch.device) -> GanPipeline:
        self.device = torch.device(device)
        self.clip.to(self.device)
        self.generator.to(self.device)
        return self

    def settings(self) -> dict[str, Any]:
        c = self.generator.config
        return {"kind": self.kind, "resolution": self.resolution, "arch": c.arch, "z_dim": c.z_dim,
                "channels": c.channels, "sampler": "one generator pass"}  # fmt: skip

    # -- building blocks -----------------------------------------------------------------------------

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        start = time.monotonic()
        embeds = sentence_embeddings(self.clip, prompts)
        self._tick("clip", start)
        return embeds

    @torch.no_grad()
    def generate(self, z: torch.Tensor, embeds: torch.Tensor, batch_size: int = 256) -> list[Image.Image]:
        """G(z, s) for rows of noise and sentence embeddings, as PIL images."""
        from dalle2.data.base import tensor_to_pil

        images: list[Image.Image] = []
        for i in range(0, z.shape[0], batch_size):
            start = time.monotonic()
            x = self.generator(z[i : i + batch_size].to(self.device), embeds[i : i + batch_size].to(self.device))
            self._tick("generator", start)
            images.extend(tensor_to_pil(img) for img in x)
        return images

    # -- text to image -------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompts: str | list[str],
        n: int = 1,
        seed: int = 0,
        *,
        truncation: float | None = None,
        batch_size: int = 256,
        progress: Any = None,
    ) -> list[Image.Image]:
        """``n`` images per prompt (prompt-major) at ``resolution``, reproducible from ``seed``.
        ``truncation``: redraw noise components beyond this magnitude (module docstring; None = off).
        ``progress``: an object with ``update(k)`` (e.g. a tqdm bar) called per finished batch."""
        items = check_prompts(prompts)
        check_count("n", n, 1, 10_000)
        check_count("batch_size", batch_size, 1, 4096)
        g = self._generator(seed)
        z = truncated_noise(len(items) * n, self.generator.z_dim, g, truncation)
        embeds = self.encode_text(items).repeat_interleave(n, 0)
        images: list[Image.Image] = []
        for i in range(0, z.shape[0], batch_size):
            images.extend(self.generate(z[i : i + batch_size], embeds[i : i + batch_size], batch_size))
            if progress is not None:
                progress.update(min(batch_size, z.shape[0] - i))
        return images

    # -- interpolation -------------------------------------------------------------------------------

    @torch.no_grad()
    def interpolate_noise(self, prompt: str, steps: int = 8, seed: int = 0) -> list[Image.Image]:
        """``steps`` images of one prompt, the noise slerped between two draws from ``seed`` (ends included)."""
        (prompt,) = check_prompts([prompt])
        check_count("steps", steps, 2, 1000)
        g = self._generator(seed)
        a, b = torch.randn(2, self.generator.z_dim, generator=g)
        z = torch.stack([slerp_noise(a, b, t) for t in torch.linspace(0, 1, steps).tolist()])
        return self.generate(z, self.encode_text([prompt]).expand(steps, -1))

    @torch.no_grad()
    def interpolate_text(self, prompt_a: str, prompt_b: str, steps: int = 8, seed: int = 0) -> list[Image.Image]:
        """``steps`` images from one noise (from ``seed``), the sentence embedding slerped from A's to B's."""
        a_text, b_text = check_prompts([prompt_a, prompt_b])
        check_count("steps", steps, 2, 1000)
        g = self._generator(seed)
        z = torch.randn(1, self.generator.z_dim, generator=g).expand(steps, -1)
        ea, eb = self.encode_text([a_text, b_text])
        embeds = torch.cat([slerp(ea[None], eb[None], t) for t in torch.linspace(0, 1, steps).tolist()])
        return self.generate(z, embeds)


def _load(folder: Path, index: dict[str, Any]) -> GanPipeline:
    return GanPipeline.from_folder(folder, index)


register("gan", _load)
