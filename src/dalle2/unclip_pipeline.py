"""The unCLIP text-to-image pipeline: prompt -> CLIP text encoder -> prior -> decoder -> upsampler -> image.

Opened by ``dalle2.load(folder)`` for folders whose ``model_index.json`` says ``"kind": "unclip"``. Besides
generation it has the paper's image features (Ramesh et al. 2022, section 3):

* ``vary(image)``: decode the image's own CLIP embedding z_i with fresh noise (stochastic DDIM, eta 1);
* ``interpolate(a, b)``: slerp between two images' z_i, decoded from one shared noise;
* ``text_diff(image, from_text, to_text)``: rotate z_i towards the normalised text difference
  z_d = norm(z_t(to) - z_t(from)) by slerp, theta from 0 to ``max_theta`` (paper: 0.5);
* ``edit(image, mask, prompt)``: inpainting; the decoder (and upsampler) replace the kept pixels by the
  original noised to the current step at every step, and the kept pixels are copied back at the end, so
  they are identical to the input (at the output resolution).

Every method is reproducible from ``seed``; all return PIL images at the output resolution, or, with
``resolution=pipe.base_resolution``, the decoder's own output (the upsampler is skipped). ``pipe.resolutions``
lists both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dalle2.errors import Dalle2Error
from dalle2.pipeline import PipelineError, register
from dalle2.pipeline_base import PipelineBase, check_components, check_count, check_prompts, component_path, slerp

__all__ = ["UnclipPipeline", "slerp"]


class UnclipPipeline(PipelineBase):
    """See the module docstring. Build with :meth:`from_folder` (or ``dalle2.load``)."""

    kind = "unclip"

    def __init__(self, folder: Path, index: dict[str, Any], clip, prior, decoder, upsampler=None) -> None:
        super().__init__(folder, index)
        self.clip, self.prior, self.decoder, self.upsampler = clip, prior, decoder, upsampler
        self.base_resolution = decoder.image_size
        self.resolution = upsampler.image_size if upsampler is not None else decoder.image_size
        self.resolutions = sorted({self.base_resolution, self.resolution})  # sizes the model makes natively

    @classmethod
    def from_folder(cls, folder: str | Path, index: dict[str, Any] | None = None) -> UnclipPipeline:
        from dalle2.models.clip import ClipModel
        from dalle2.models.decoder import ImageDiffusion
        from dalle2.models.prior import DiffusionPrior
        from dalle2.pipeline import read_index

        folder = Path(folder)
        index = index or read_index(folder)
        train = "`dalle2 train {step} --out {folder}` (or `dalle2 train all`)"
        components = check_components(folder, index, ("clip", "prior", "decoder"), "unCLIP", train)
        try:
            clip = ClipModel.load(component_path(folder, index, "clip")).requires_grad_(False).eval()
            prior = DiffusionPrior.from_pretrained(component_path(folder, index, "prior")).eval()
            decoder = ImageDiffusion.from_pretrained(component_path(folder, index, "decoder")).eval()
            upsampler = None
            if "upsampler" in components and component_path(folder, index, "upsampler").is_dir():
                upsampler = ImageDiffusion.from_pretrained(component_path(folder, index, "upsampler")).eval()
        except (Dalle2Error, FileNotFoundError) as error:
            raise PipelineError(str(error)) from None
        return cls(folder, index, clip, prior, decoder, upsampler)

    def to(self, device: str | torch.device) -> UnclipPipeline:
        self.device = torch.device(device)
        for m in (self.clip, self.prior, self.decoder, self.upsampler):
            if m is not None:
                m.to(self.device)
        return self

    # -- settings ------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        d, p = self.decoder.config, self.prior.config
        out = {
            "kind": self.kind,
            "resolution": self.resolution,
            "prior": {"sampler": p.sampler, "steps": p.sample_steps, "guidance": p.guidance_scale,
                      "candidates": p.num_candidates},
            "decoder": {"sampler": d.sampler, "steps": d.sample_steps, "guidance": d.guidance_scale},
        }  # fmt: skip
        if self.upsampler is not None:
            u = self.upsampler.config
            out["upsampler"] = {"sampler": u.sampler, "steps": u.sample_steps, "noise_level": u.sample_aug_level}
        return out

    # -- building blocks -----------------------------------------------------------------------------

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        emb, hidden, mask = self.clip.encode_prompts(prompts)
        return emb.float(), hidden.float(), mask.bool()

    def decoder_caption(
        self, prompts: list[str], hidden: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The caption as the decoder reads it: CLIP's token encodings ``hidden``, or token ids for a decoder
        with its own caption encoder (GLIDE's)."""
        return self.decoder.caption_inputs(self.clip, prompts, hidden, mask)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image | str | Path]) -> torch.Tensor:
        """CLIP image embeddings (B, D) of images (resized to the CLIP's input)."""
        return self.clip.encode_image(self.images_to_tensor(images, self.clip.image_size).to(self.device))

    @staticmethod
    def images_to_tensor(images: Sequence[Image.Image | str | Path], size: int) -> torch.Tensor:
        from dalle2.data.base import pil_to_tensor, resize_center_crop

        out = []
        for item in images:
            image = open_image(item) if not isinstance(item, Image.Image) else item
            out.append(pil_to_tensor(resize_center_crop(image.convert("RGB"), size)))
        return torch.stack(out)

    def _decode(
        self,
        image_embed: torch.Tensor,
        generator: torch.Generator,
        text: tuple[torch.Tensor, torch.Tensor] | None = None,
        noise: torch.Tensor | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        inpaint: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        b, r = image_embed.shape[0], self.base_resolution
        start = time.monotonic()
        if noise is None:
            noise = torch.randn(b, 3, r, r, generator=generator)
        kwargs: dict[str, Any] = {}
        if text is not None:
            kwargs = {"text_tokens": text[0].to(self.device), "text_mask": text[1].to(self.device)}
        x = self.decoder.sample(
            noise.to(self.device), image_embed=image_embed.to(self.device), steps=steps, guidance_scale=guidance,
            sampler=sampler, eta=eta, generator=generator, inpaint=inpaint, **kwargs,
        )  # fmt: skip
        self._tick("decoder", start)
        return x

    def _upsample(self, x: torch.Tensor, generator: torch.Generator, inpaint=None) -> torch.Tensor:
        if self.upsampler is None:
            return x
        start = time.monotonic()
        r = self.upsampler.image_size
        noise = torch.randn(x.shape[0], 3, r, r, generator=generator).to(self.device)
        out = self.upsampler.sample(noise, low_res=x, generator=generator, inpaint=inpaint)
        self._tick("upsampler", start)
        return out

    def _upsamples(self, resolution: int | None) -> bool:
        """Whether an output of ``resolution`` pixels (None: the output resolution) runs the upsampler."""
        if resolution is None or resolution == self.resolution:
            return self.upsampler is not None
        if resolution == self.base_resolution:
            return False
        sizes = " or ".join(str(r) for r in self.resolutions)
        raise PipelineError(f"resolution must be {sizes} (the sizes this model makes), got {resolution!r}")

    @staticmethod
    def to_pil(x: torch.Tensor) -> list[Image.Image]:
        from dalle2.data.base import tensor_to_pil

        return [tensor_to_pil(img) for img in x]

    # -- text to image -------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompts: str | list[str],
        n: int = 1,
        seed: int = 0,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        prior_steps: int | None = None,
        prior_guidance: float | None = None,
        batch_size: int = 64,
        progress: Any = None,
        resolution: int | None = None,
    ) -> list[Image.Image]:
        """``n`` images per prompt (prompt-major) at the output resolution, reproducible from ``seed``.
        ``progress``: an object with ``update(k)`` (e.g. a tqdm bar) called per finished image.
        ``resolution=pipe.base_resolution``: the decoder's images, without the upsampler."""
        items = check_prompts(prompts)
        upsample = self._upsamples(resolution)
        check_count("n", n, 1, 10_000)
        check_count("batch_size", batch_size, 1, 4096)
        self._check_steps(steps, prior_steps, guidance)
        self._check_steps(None, None, prior_guidance)
        rows = [p for p in items for _ in range(n)]
        images: list[Image.Image] = []
        g = self._generator(seed)
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            start = time.monotonic()
            z_t, hidden, mask = self.encode_text(chunk)
            self._tick("clip", start)
            start = time.monotonic()
            z_i = self.prior.sample(z_t, hidden, mask, steps=prior_steps, guidance_scale=prior_guidance, generator=g)
            self._tick("prior", start)
            caption = self.decoder_caption(chunk, hidden, mask)
            x = self._decode(z_i, g, caption, steps=steps, guidance=guidance, sampler=sampler)
            images.extend(self.to_pil(self._upsample(x, g) if upsample else x))
            if progress is not None:
                progress.update(len(chunk))
        return images

    def _check_steps(self, steps: int | None, prior_steps: int | None = None, guidance: float | None = None) -> None:
        for name, value in (("steps", steps), ("prior steps", prior_steps)):
            if value is not None:
                check_count(name, value, 1, 1000)
        if guidance is not None and not 0 <= guidance <= 100:
            raise PipelineError(f"guidance must be between 0 and 100, got {guidance}")

    # -- image features ------------------------------------------------------------------------------

    @torch.no_grad()
    def vary(
        self,
        image: Image.Image | str | Path,
        n: int = 4,
        seed: int = 0,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        eta: float = 1.0,
        resolution: int | None = None,
        batch_size: int = 64,
        progress: Any = None,
    ) -> list[Image.Image]:
        """``n`` variations of ``image``: its z_i decoded with fresh noise (stochastic DDIM), ``batch_size``
        at a time; ``progress``: an object with ``update(k)`` called per finished batch, as in ``__call__``."""
        check_count("n", n, 1, 1000)
        check_count("batch_size", batch_size, 1, 4096)
        self._check_steps(steps, None, guidance)
        upsample = self._upsamples(resolution)
        z_i = self.encode_images([image])
        g = self._generator(seed)
        images: list[Image.Image] = []
        for k in _batches(n, batch_size):
            x = self._decode(z_i.repeat(k, 1), g, steps=steps, guidance=guidance, sampler="ddim", eta=eta)
            images.extend(self.to_pil(self._upsample(x, g) if upsample else x))
            if progress is not None:
                progress.update(k)
        return images

    @torch.no_grad()
    def interpolate(
        self,
        a: Image.Image | str | Path,
        b: Image.Image | str | Path,
        steps: int = 8,
        seed: int = 0,
        *,
        sample_steps: int | None = None,
        guidance: float | None = None,
    ) -> list[Image.Image]:
        """``steps`` images along the slerp from a's z_i to b's, all decoded from the same noise."""
        check_count("steps", steps, 2, 64)
        self._check_steps(sample_steps)
        za, zb = self.encode_images([a, b])
        z = torch.stack([slerp(za, zb, t) for t in np.linspace(0.0, 1.0, steps)])
        return self._from_shared_noise(z, seed, sample_steps, guidance)

    @torch.no_grad()
    def text_diff(
        self,
        image: Image.Image | str | Path,
        from_text: str,
        to_text: str,
        steps: int = 6,
        seed: int = 0,
        *,
        max_theta: float = 0.5,
        sample_steps: int | None = None,
        guidance: float | None = None,
    ) -> list[Image.Image]:
        """The paper's text diffs: z_i rotated towards norm(z_t(to) - z_t(from)), theta 0..max_theta."""
        check_prompts([from_text, to_text])
        check_count("steps", steps, 2, 64)
        if not 0 < max_theta <= 1:
            raise PipelineError(f"max_theta must be in (0, 1], got {max_theta}")
        self._check_steps(sample_steps)
        z_i = self.encode_images([image])[0]
        z_t, _, _ = self.encode_text([from_text, to_text])
        z_d = F.normalize(z_t[1] - z_t[0], dim=-1)
        z = torch.stack([slerp(z_i, z_d, t) for t in np.linspace(0.0, max_theta, steps)])
        return self._from_shared_noise(z, seed, sample_steps, guidance)

    def _from_shared_noise(self, z: torch.Tensor, seed: int, steps: int | None, guidance: float | None):
        g = self._generator(seed)
        r = self.base_resolution
        noise = torch.randn(1, 3, r, r, generator=g).expand(z.shape[0], -1, -1, -1).contiguous()
        x = self._decode(z, g, noise=noise, steps=steps, guidance=guidance, sampler="ddim", eta=0.0)
        if self.upsampler is None:
            return self.to_pil(x)
        ru = self.upsampler.image_size
        up_noise = torch.randn(1, 3, ru, ru, generator=g).expand(z.shape[0], -1, -1, -1).contiguous()
        start = time.monotonic()
        out = self.upsampler.sample(up_noise, low_res=x, generator=g, sampler="ddim", eta=0.0)
        self._tick("upsampler", start)
        return self.to_pil(out)

    @torch.no_grad()
    def edit(
        self,
        image: Image.Image | str | Path,
        mask: Image.Image | str | Path,
        prompt: str,
        n: int = 1,
        seed: int = 0,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        resolution: int | None = None,
        batch_size: int = 64,
        progress: Any = None,
    ) -> list[Image.Image]:
        """Inpaint: regenerate the masked region from ``prompt``; the rest is kept exactly. ``n`` edits,
        ``batch_size`` at a time (``progress`` as in ``__call__``).

        Mask: an image of the same size as ``image``; with an alpha channel, fully transparent pixels
        are edited (the OpenAI convention); without one, white (luminance >= 128) pixels are edited.
        The image is resized to the output resolution first (square images only keep every pixel)."""
        (prompt,) = check_prompts([prompt])
        check_count("n", n, 1, 1000)
        check_count("batch_size", batch_size, 1, 4096)
        self._check_steps(steps)
        upsample = self._upsamples(resolution)
        img = open_image(image) if not isinstance(image, Image.Image) else image
        msk = open_image(mask) if not isinstance(mask, Image.Image) else mask
        if img.size != msk.size:
            raise PipelineError(f"the mask is {msk.size[0]}x{msk.size[1]} but the image is {img.size[0]}x{img.size[1]}")
        if img.size[0] != img.size[1]:  # the image is centre-cropped to a square: crop the mask alike
            w, h = img.size
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
            img, msk = img.crop(box), msk.crop(box)
        edit_region = mask_to_edit_region(msk)  # (H, W) float, 1 = edit
        if edit_region.sum() == 0:
            raise PipelineError("the mask marks nothing to edit (no transparent / white pixels)")
        base_r = self.base_resolution
        out_r = self.resolution if upsample else base_r
        known_hi1 = self.images_to_tensor([img], out_r)
        region = torch.from_numpy(edit_region)[None, None]
        keep_hi = 1 - (F.interpolate(region, size=(out_r, out_r), mode="area") > 0.0).float()  # any edited -> edit
        keep_lo = 1 - (F.interpolate(region, size=(base_r, base_r), mode="area") > 0.0).float()
        known_lo1 = F.interpolate(known_hi1, size=(base_r, base_r), mode="area")
        g = self._generator(seed)
        images: list[Image.Image] = []
        for k in _batches(n, batch_size):
            known_hi, known_lo = known_hi1.repeat(k, 1, 1, 1), known_lo1.repeat(k, 1, 1, 1)
            z_t, hidden, mask_t = self.encode_text([prompt] * k)
            z_i = self.prior.sample(z_t, hidden, mask_t, generator=g)
            caption = self.decoder_caption([prompt] * k, hidden, mask_t)
            x = self._decode(z_i, g, caption, steps=steps, guidance=guidance, inpaint=(known_lo, keep_lo))
            if upsample:
                x = self._upsample(x, g, inpaint=(known_hi, keep_hi.expand_as(known_hi)))
            x = keep_hi * known_hi + (1 - keep_hi) * x  # kept pixels exactly as given
            images.extend(self.to_pil(x))
            if progress is not None:
                progress.update(k)
        return images


def _batches(n: int, batch_size: int) -> list[int]:
    """Sizes of the batches that make ``n`` items, ``batch_size`` at a time (the last one smaller)."""
    return [min(batch_size, n - i) for i in range(0, n, batch_size)]


def open_image(path: str | Path | Image.Image) -> Image.Image:
    """Open an image file with clear errors (missing, not an image, decompression bomb)."""
    if isinstance(path, Image.Image):
        return path
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            return im.copy()
    except Image.DecompressionBombError:
        raise PipelineError(f"{p}: image too large") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise PipelineError(f"{p}: not a readable image ({error})") from None


def mask_to_edit_region(mask: Image.Image) -> np.ndarray:
    """(H, W) float32, 1 where the image is to be edited (see :meth:`UnclipPipeline.edit`)."""
    if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = np.asarray(mask.convert("RGBA"))[..., 3]
        return (alpha == 0).astype(np.float32)
    return (np.asarray(mask.convert("L")) >= 128).astype(np.float32)


def _load(folder: Path, index: dict[str, Any]) -> UnclipPipeline:
    return UnclipPipeline.from_folder(folder, index)


register("unclip", _load)
