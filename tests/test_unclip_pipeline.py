"""The unCLIP pipeline's Python API on the tiny trained pipeline (16x16 base, 32x32 output)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dalle2
from dalle2.models.decoder import ImageDiffusion
from dalle2.pipeline import PipelineError
from dalle2.unclip_pipeline import UnclipPipeline

PROMPT = "a red circle above a blue square"


@pytest.fixture(scope="module")
def pipe(tiny_unclip: Path) -> UnclipPipeline:
    return dalle2.load(tiny_unclip)


@pytest.fixture(scope="module")
def picture(pipe: UnclipPipeline) -> Image.Image:
    """A 32x32 (output-resolution) picture from the pipeline itself."""
    return pipe(PROMPT, 1, seed=11)[0]


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(arr(a), arr(b))


def test_load_gives_the_unclip_pipeline(pipe):
    assert isinstance(pipe, UnclipPipeline)
    assert (pipe.base_resolution, pipe.resolution) == (16, 32)
    settings = pipe.settings()
    assert settings["kind"] == "unclip" and settings["resolution"] == 32 and "upsampler" in settings


def test_generate_sizes_seeds_and_prompts(pipe):
    images = pipe([PROMPT, "a green triangle"], n=3, seed=0)
    assert len(images) == 6
    assert all(im.size == (32, 32) and im.mode == "RGB" for im in images)
    again = pipe([PROMPT, "a green triangle"], n=3, seed=0)
    assert all(same(a, b) for a, b in zip(images, again, strict=True))
    other_seed = pipe([PROMPT, "a green triangle"], n=3, seed=1)
    assert not any(same(a, b) for a, b in zip(images, other_seed, strict=True))
    # the same noise, another prompt: different images
    red, green = pipe(PROMPT, 2, seed=4), pipe("a green triangle", 2, seed=4)
    assert not any(same(a, b) for a, b in zip(red, green, strict=True))
    # n images of one prompt differ from each other
    assert not same(images[0], images[1])


def test_progress_is_told_every_image(pipe):
    class Counter:
        total = 0

        def update(self, k: int) -> None:
            self.total += k

    counter = Counter()
    pipe(["a", "b", "c"], n=2, seed=0, batch_size=4, progress=counter)
    assert counter.total == 6


def test_guidance_reaches_the_decoder_and_changes_the_images(pipe, monkeypatch):
    calls = []
    original = ImageDiffusion.sample

    def spy(self, noise, **kwargs):
        calls.append((self.config.role, kwargs.get("guidance_scale"), kwargs.get("steps"), kwargs.get("sampler")))
        return original(self, noise, **kwargs)

    monkeypatch.setattr(ImageDiffusion, "sample", spy)
    one = pipe(PROMPT, 2, seed=3, guidance=1.0, steps=3, sampler="ddpm")
    three = pipe(PROMPT, 2, seed=3, guidance=3.0, steps=3, sampler="ddpm")
    assert ("decoder", 1.0, 3, "ddpm") in calls and ("decoder", 3.0, 3, "ddpm") in calls
    assert not any(same(a, b) for a, b in zip(one, three, strict=True))
    # a larger scale moves further from the unguided images
    zero = pipe(PROMPT, 2, seed=3, guidance=0.0, steps=3, sampler="ddpm")
    d1 = np.abs(arr(zero[0]) - arr(one[0])).sum()
    d3 = np.abs(arr(zero[0]) - arr(three[0])).sum()
    assert 0 < d1 < d3


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_every_sampler_runs(pipe, sampler):
    images = pipe(PROMPT, 1, seed=0, sampler=sampler, steps=2, prior_steps=2)
    assert images[0].size == (32, 32) and arr(images[0]).std() > 0


def test_vary(pipe, picture):
    out = pipe.vary(picture, 3, seed=2)
    assert len(out) == 3 and all(im.size == (32, 32) for im in out)
    assert all(same(a, b) for a, b in zip(out, pipe.vary(picture, 3, seed=2), strict=True))
    assert not same(out[0], out[1])
    assert not same(out[0], pipe.vary(picture, 1, seed=3)[0])


class BatchLog:
    def __init__(self) -> None:
        self.updates: list[int] = []

    def update(self, k: int) -> None:
        self.updates.append(k)


def test_vary_and_edit_in_batches(pipe, picture):
    """n images batch_size at a time: the progress object hears of every batch, the first batch is what a
    run of that size alone gives, and every image is still a distinct sample."""
    bar = BatchLog()
    out = pipe.vary(picture, 3, seed=2, batch_size=2, progress=bar)
    assert bar.updates == [2, 1] and len(out) == 3
    assert all(same(a, b) for a, b in zip(out[:2], pipe.vary(picture, 2, seed=2), strict=True))
    assert not same(out[2], out[0]) and not same(out[2], out[1])
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 20))
    bar = BatchLog()
    edits = pipe.edit(picture, mask, "a green triangle", n=3, seed=0, batch_size=2, progress=bar)
    assert bar.updates == [2, 1] and len(edits) == 3
    assert all(same(a, b) for a, b in zip(edits[:2], pipe.edit(picture, mask, "a green triangle", n=2), strict=True))
    kept = np.asarray(mask) < 128
    assert np.array_equal(arr(edits[2])[kept], arr(picture)[kept]) and not same(edits[2], edits[0])
    with pytest.raises(PipelineError, match="batch_size"):
        pipe.vary(picture, 2, batch_size=0)


def test_interpolate_and_text_diff_share_the_first_frame(pipe, picture):
    other = pipe("a green triangle", 1, seed=5)[0]
    frames = pipe.interpolate(picture, other, 5, seed=1)
    assert len(frames) == 5 and all(im.size == (32, 32) for im in frames)
    assert not same(frames[0], frames[-1])
    assert all(same(a, b) for a, b in zip(frames, pipe.interpolate(picture, other, 5, seed=1), strict=True))
    diffs = pipe.text_diff(picture, "a red circle", "a blue circle", 4, seed=1)
    assert len(diffs) == 4
    # theta 0 / t 0 is the picture's own (normalised) embedding, decoded from the same seeded noise
    assert same(diffs[0], frames[0])
    assert not same(diffs[0], diffs[-1])


def test_edit_keeps_every_unmasked_pixel(pipe, picture):
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 20))
    edited = np.asarray(mask) >= 128
    out = pipe.edit(picture, mask, "a green triangle", n=2, seed=0)
    assert len(out) == 2
    for image in out:
        assert image.size == (32, 32)
        assert np.array_equal(arr(image)[~edited], arr(picture)[~edited])
        assert np.abs(arr(image)[edited] - arr(picture)[edited]).mean() > 5
    # alpha convention: fully transparent pixels are edited -> the same region, the same result
    rgba = picture.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(edited, 0, 255).astype(np.uint8)))
    assert same(pipe.edit(picture, rgba, "a green triangle", n=2, seed=0)[1], out[1])


def test_base_resolution_skips_the_upsampler(pipe, picture):
    assert pipe.resolutions == [16, 32]
    small = pipe(PROMPT, 2, seed=0, resolution=16)
    assert [im.size for im in small] == [(16, 16)] * 2
    assert all(same(a, b) for a, b in zip(small, pipe(PROMPT, 2, seed=0, resolution=16), strict=True))
    assert all(same(a, b) for a, b in zip(pipe(PROMPT, 2, seed=0), pipe(PROMPT, 2, seed=0, resolution=32), strict=True))
    assert [im.size for im in pipe.vary(picture, 2, seed=1, resolution=16)] == [(16, 16)] * 2
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 32, 8))  # edit the top quarter
    small_picture = picture.resize((16, 16), Image.Resampling.BOX)
    for image in pipe.edit(small_picture, mask.resize((16, 16)), "a green triangle", n=2, seed=0, resolution=16):
        assert image.size == (16, 16)
        assert np.array_equal(arr(image)[4:], arr(small_picture)[4:])
    with pytest.raises(PipelineError, match="resolution must be 16 or 32"):
        pipe(PROMPT, 1, resolution=64)


def test_errors_name_the_problem(pipe, picture, tmp_path):
    cases = [
        (lambda: pipe("", 1), "empty prompt"),
        (lambda: pipe([], 1), "no prompts"),
        (lambda: pipe(PROMPT, 0), "n must be"),
        (lambda: pipe(PROMPT, 1, steps=0), "steps must be"),
        (lambda: pipe(PROMPT, 1, steps=100_000), "steps must be"),
        (lambda: pipe(PROMPT, 1, prior_steps=-1), "prior steps must be"),
        (lambda: pipe.vary(tmp_path / "missing.png"), "image not found"),
        (lambda: pipe.interpolate(picture, picture, 1), "steps must be"),
        (lambda: pipe.text_diff(picture, "a", "b", max_theta=2.0), "max_theta"),
        (lambda: pipe.edit(picture, Image.new("L", (16, 32), 255), "x"), "the mask is 16x32 but the image is 32x32"),
        (lambda: pipe.edit(picture, Image.new("L", (32, 32), 0), "x"), "marks nothing to edit"),
    ]
    for call, message in cases:
        with pytest.raises(PipelineError, match=message):
            call()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    with pytest.raises(PipelineError, match="not a readable image"):
        pipe.vary(corrupt)


def test_components_are_found_where_the_index_says(tiny_unclip, tmp_path):
    """model_index.json's components[name].folder is where a component lives, not a fixed name."""
    import json
    import shutil

    folder = tmp_path / "moved"
    shutil.copytree(tiny_unclip, folder)
    (folder / "decoder").rename(folder / "decoder-v2")
    index = json.loads((folder / "model_index.json").read_text())
    index["components"]["decoder"]["folder"] = "decoder-v2"
    (folder / "model_index.json").write_text(json.dumps(index))
    moved = dalle2.load(folder)
    original = dalle2.load(tiny_unclip)
    assert same(moved(PROMPT, 1, seed=3)[0], original(PROMPT, 1, seed=3)[0])
    index["components"]["decoder"]["folder"] = "../elsewhere"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(PipelineError, match="not a subfolder"):
        dalle2.load(folder)
