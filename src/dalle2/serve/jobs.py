"""What the model worker thread runs for each kind of request, and how results become response items.

Batching and seeds. A pipeline call takes one seed for all its images, so images made in a merged call
depend on which requests shared the call. Hence:

* a generation request **without** ``seed`` may be merged with others of the same model, render size and
  sampler options (one call: every request's prompt repeated ``n`` times, ``n=1``, a fresh random seed; the
  images are split back in order). These requests asked for no particular images, so nothing is lost, and
  merging is the throughput win.
* a request **with** ``seed`` runs alone: ``pipe([prompt], n, seed)``, the same images as
  ``dalle2 generate PROMPT -n N --seed S`` at that size, whatever else the server is doing.
* edits and variations always run alone (each has its own input image), seeded or random.
"""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Hashable, Sequence
from typing import Any

from PIL import Image

from dalle2.serve.validation import ImageRequest


def random_seed() -> int:
    return secrets.randbelow(2**63)


def batch_key(request: ImageRequest) -> Hashable | None:
    """Requests with equal keys may share one model call; None: the request runs alone."""
    if request.kind != "generate" or request.seed is not None:
        return None
    model = request.model
    return ("generate", model.id, model.render_size(request.size), request.steps, request.guidance)


def _pipe_options(request: ImageRequest) -> dict[str, Any]:
    model = request.model
    options = request.sampler_options()
    render = model.render_size(request.size)
    if render != model.pipe.resolution:  # a smaller native size (unCLIP: the decoder's, no upsampler)
        options["resolution"] = render
    return options


def run_batch(requests: Sequence[ImageRequest]) -> list[list[Image.Image]]:
    """Worker thread: one model call for ``requests`` (all of one batch key, or a single request)."""
    first = requests[0]
    pipe = first.model.pipe
    options = _pipe_options(first)
    seed = first.seed if first.seed is not None else random_seed()
    if first.kind == "edit":
        mask = first.mask if first.mask is not None else first.image
        return [pipe.edit(first.image, mask, first.prompt, first.n, seed, **options)]
    if first.kind == "variation":
        return [pipe.vary(first.image, first.n, seed, **options)]
    if len(requests) == 1:
        return [pipe([first.prompt], n=first.n, seed=seed, **options)]
    prompts = [r.prompt for r in requests for _ in range(r.n)]
    images = pipe(prompts, n=1, seed=seed, **options)
    if len(images) != len(prompts):
        raise RuntimeError(f"the pipeline made {len(images)} images for {len(prompts)} prompts")
    out, start = [], 0
    for r in requests:
        out.append(images[start : start + r.n])
        start += r.n
    return out


def to_png(image: Image.Image, size: int) -> bytes:
    """The image at ``size`` x ``size`` (Lanczos when resized) as PNG bytes."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")
