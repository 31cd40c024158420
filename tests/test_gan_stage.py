"""``dalle2 train gan`` end to end on the tiny preset (CLIP copied from the committed fixture), the GAN
pipeline it writes, exact resume, the generate / interpolate commands, the article preset on IDX files,
and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import dalle2
from dalle2.cli import main
from dalle2.config import ConfigError
from dalle2.eval.evaluate import EvalError, evaluate_model
from dalle2.gan_pipeline import GanPipeline, truncated_noise
from dalle2.pipeline import PipelineError
from dalle2.stages.gan_stage import GanStageError, train_gan
from tests.test_idx import make_split

FIXTURES = Path(__file__).parent / "fixtures"
TINY = {"preset": "tiny", "data": "shapes", "clip_from": str(FIXTURES / "unclip-tiny"), "log_with": None,
        "progress": False, "quiet": True}  # fmt: skip
# DF-GAN's affine layers start as the identity, so the caption has no effect at initialisation: a higher LR
# for G and a small noise (the caption is then most of the condition) make it visible after 4 steps
FAST = ["train.learning_rate=0.01", "gan.d_lr_scale=0.25", "gan.z_dim=4"]
A, B = "a red circle", "a blue square"


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.fixture(scope="module")
def gan_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gan") / "pipe"
    report = train_gan(out=str(out), overrides=FAST, **TINY)
    assert report["train"]["step"] == 4 and report["resolution"] == 16
    return out


@pytest.fixture(scope="module")
def pipe(gan_folder) -> GanPipeline:
    return dalle2.load(gan_folder)


def test_folder_index_report_and_checkpoint(gan_folder):
    index = json.loads((gan_folder / "model_index.json").read_text())
    assert index["kind"] == "gan" and index["format"] == "dalle2" and index["format_version"] == 1
    assert set(index["components"]) == {"clip", "tokenizer", "gan"} and index["resolutions"] == [16]
    assert index["components"]["clip"]["embed_dim"] == 16
    report = json.loads((gan_folder / "gan" / "report.json").read_text())
    assert {"clip_cosine_generated", "clip_cosine_real_unrelated"} <= report["conditioning"].keys()
    assert report["train"]["final_losses"].keys() == {"discriminator", "generator"}
    shipped = load_file(gan_folder / "gan" / "model.safetensors")
    assert shipped and all(k.startswith("net.") for k in shipped)  # the EMA generator alone
    checkpoint = gan_folder / "training" / "gan" / "checkpoints" / "step_00000004"
    raw = load_file(checkpoint / "model.safetensors")
    assert any(k.startswith("discriminator.") for k in raw) and any(k.startswith("generator.") for k in raw)
    assert load_file(checkpoint / "ema.safetensors").keys() == shipped.keys()
    assert sorted(p.name for p in (gan_folder / "training" / "gan" / "samples").iterdir()) == [
        "step_00000002.png",
        "step_00000004.png",
    ]


def test_pipeline_images(pipe):
    assert isinstance(pipe, GanPipeline) and pipe.resolution == 16 and pipe.settings()["kind"] == "gan"
    images = pipe([A, B], n=2, seed=3)
    assert len(images) == 4 and all(im.size == (16, 16) and im.mode == "RGB" for im in images)
    assert all(np.array_equal(arr(x), arr(y)) for x, y in zip(images, pipe([A, B], n=2, seed=3), strict=True))
    assert not np.array_equal(arr(pipe(A, 1, seed=3)[0]), arr(pipe(A, 1, seed=4)[0]))
    a, b = pipe(A, 1, seed=5)[0], pipe(B, 1, seed=5)[0]  # the same noise, another caption
    assert np.abs(arr(a) - arr(b)).mean() > 0.5
    assert np.array_equal(arr(pipe([A, B], 1, seed=5, batch_size=1)[0]), arr(a))  # batching changes nothing


def test_interpolation(pipe):
    row = pipe.interpolate_text(A, B, steps=5, seed=5)
    assert len(row) == 5
    assert np.abs(arr(row[0]) - arr(pipe(A, 1, seed=5)[0])).max() <= 1  # the ends are the prompts' images
    assert np.abs(arr(row[-1]) - arr(pipe(B, 1, seed=5)[0])).max() <= 1
    walk = pipe.interpolate_noise(A, steps=4, seed=2)
    assert len(walk) == 4 and not np.array_equal(arr(walk[0]), arr(walk[-1]))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p("", 1), "empty prompt"),
        (lambda p: p([], 1), "no prompts"),
        (lambda p: p(A, 0), "n must be an integer from 1 to 10000"),
        (lambda p: p(A, 1, seed=-1), "seed must be an integer"),
        (lambda p: p.interpolate_noise(A, steps=1), "steps must be an integer from 2"),
        (lambda p: p.interpolate_text(A, "  "), "empty prompt"),
    ],
)
def test_pipeline_bad_input(pipe, call, message):
    with pytest.raises(PipelineError, match=message):
        call(pipe)


def test_truncated_noise_redraws_only_what_is_beyond_the_threshold():
    z = truncated_noise(256, 16, torch.Generator().manual_seed(1), 0.5)
    assert z.shape == (256, 16) and z.abs().max() <= 0.5
    assert z.std() < 0.35  # a normal truncated at 0.5 has std 0.28; the plain one 1
    assert torch.equal(z, truncated_noise(256, 16, torch.Generator().manual_seed(1), 0.5))
    plain = truncated_noise(256, 16, torch.Generator().manual_seed(1))
    assert torch.equal(plain, torch.randn(256, 16, generator=torch.Generator().manual_seed(1)))
    kept = plain.abs() <= 0.5  # components already inside are kept, the rest redrawn
    assert torch.equal(z[kept], plain[kept])
    for bad in (0, -1.0, 10.5, float("nan"), True, "1"):
        with pytest.raises(PipelineError, match="truncation must be a number in"):
            truncated_noise(4, 4, torch.Generator(), bad)


def test_pipeline_truncation(pipe):
    narrow = pipe([A, B], n=2, seed=3, truncation=0.25)
    assert all(np.array_equal(arr(x), arr(y)) for x, y in zip(narrow, pipe([A, B], 2, 3, truncation=0.25), strict=True))
    plain = pipe([A, B], n=2, seed=3)
    assert any(not np.array_equal(arr(x), arr(y)) for x, y in zip(narrow, plain, strict=True))
    # a threshold no Gaussian draw reaches here changes nothing
    assert all(np.array_equal(arr(x), arr(y)) for x, y in zip(pipe([A, B], 2, 3, truncation=10), plain, strict=True))
    with pytest.raises(PipelineError, match="truncation must be a number in"):
        pipe(A, 1, truncation=0)


def test_truncation_command_options(gan_folder, pipe, tmp_path, capsys):
    out = tmp_path / "t.png"
    argv = ["generate", A, "--model", str(gan_folder), "-n", "2", "--seed", "5", "--cell", "16", "-o", str(out)]
    assert main([*argv, "--truncation", "0.3"]) == 0
    grid = Image.open(out).convert("RGB")
    assert np.array_equal(arr(grid.crop((2, 2, 18, 18))), arr(pipe(A, 2, seed=5, truncation=0.3)[0]))
    capsys.readouterr()
    for value, message in [("0", "must be greater than 0 and at most 10"), ("x", "expected a number")]:
        with pytest.raises(SystemExit):
            main([*argv, "--truncation", value])
        assert message in capsys.readouterr().err
    assert main(["generate", A, "-o", str(tmp_path / "u.png"), "--truncation", "0.5"]) == 2  # the bundled unCLIP
    assert "--truncation: only for GAN pipelines" in capsys.readouterr().err


def test_eval_sampling_options_belong_to_their_model_kind(gan_folder, pipe, tmp_path):
    with pytest.raises(EvalError, match="guidance: a sampling option of unclip models, not of .* \\(gan\\)"):
        evaluate_model(gan_folder, "shapes", tmp_path, quick=True, sample_kwargs={"guidance": 3.0}, pipeline=pipe)

    class Unclip:
        kind = "unclip"

    with pytest.raises(EvalError, match="truncation: a sampling option of gan models, not of x \\(unclip\\)"):
        evaluate_model("x", "shapes", tmp_path, sample_kwargs={"truncation": 0.5, "steps": 4}, pipeline=Unclip())


def test_resume_continues_exactly(gan_folder, tmp_path):
    out = tmp_path / "pipe"
    first = train_gan(out=str(out), max_steps=2, overrides=FAST, **TINY)
    assert first["train"]["step"] == 2
    with pytest.raises(Exception, match="already holds a checkpoint"):
        train_gan(out=str(out), overrides=FAST, **TINY)
    report = train_gan(out=str(out), resume=True, overrides=FAST, **TINY)
    assert report["train"]["step"] == 4 and report["train"]["steps_this_run"] == 2
    for file in ("gan/model.safetensors", "training/gan/checkpoints/step_00000004/model.safetensors"):
        a, b = load_file(gan_folder / file), load_file(out / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file


def test_generate_and_interpolate_commands(gan_folder, pipe, tmp_path, capsys):
    out = tmp_path / "gen.png"
    assert (
        main(["generate", A, "--model", str(gan_folder), "-n", "3", "--seed", "5", "-o", str(out), "--cell", "16"]) == 0
    )
    grid = Image.open(out).convert("RGB")
    assert grid.size == (3 * 18 + 2, 18 + 2)
    assert np.array_equal(arr(grid.crop((2, 2, 18, 18))), arr(pipe(A, 3, seed=5)[0]))
    row = tmp_path / "row.png"
    argv = ["interpolate", "--model", str(gan_folder), "--steps", "4", "-o", str(row), "--cell", "16"]
    assert main([*argv, "--from-prompt", A, "--to-prompt", B]) == 0 and Image.open(row).size == (4 * 18 + 2, 20)
    assert main([*argv, "--prompt", A]) == 0
    capsys.readouterr()
    for extra, message in [
        (["--from-prompt", A], "needs both --from-prompt and --to-prompt"),
        (["--prompt", A, "--to-prompt", B], "one way at a time"),
        (["--prompt", A, "--guidance", "3"], "--guidance: only for unCLIP pipelines"),
        ([str(row), str(row)], "has no image interpolation; interpolate prompts with --prompt"),
        ([], "one way at a time"),
    ]:
        assert main([*argv, *extra]) == 2
        assert message in capsys.readouterr().err


def test_trains_its_own_clip_without_clip_from(tmp_path):
    out = tmp_path / "pipe"
    report = train_gan(out=str(out), **{**TINY, "clip_from": None})
    assert report["train"]["step"] == 4
    assert (out / "training" / "clip").is_dir() and (out / "tokenizer" / "tokenizer.json").is_file()
    index = json.loads((out / "model_index.json").read_text())
    assert index["kind"] == "gan" and index["components"]["clip"]["source"] == "trained"
    assert dalle2.load(out)(A, 1)[0].size == (16, 16)


def test_article_preset_on_idx_files(tmp_path):
    root = tmp_path / "idx"
    root.mkdir()
    make_split(root, 23, "train", gz=True, seed=0)
    make_split(root, 7, "t10k", gz=False, seed=1)
    out = tmp_path / "article"
    report = train_gan(out=str(out), **{**TINY, "preset": "article", "data": f"fashion-mnist:{root}"},
                       max_steps=2, overrides=["train.batch_size=8"])  # fmt: skip
    assert report["arch"] == "article" and report["resolution"] == 28 and report["channels"] == 1
    assert report["train"]["step"] == 2
    pipe = dalle2.load(out)
    config = pipe.generator.config
    assert (config.arch, config.z_dim, config.dense_widths, config.conv_widths) == (
        "article", 100, [128, 256, 512, 1024], [32, 64, 128, 256])  # fmt: skip
    image = pipe("a photo of a sneaker", 1)[0]
    assert image.size == (28, 28) and image.mode == "RGB"
    r, g, b = np.asarray(image).transpose(2, 0, 1)
    assert np.array_equal(r, g) and np.array_equal(g, b)  # grayscale model, RGB image


def test_bad_inputs(tmp_path, capsys):
    out = str(tmp_path / "never")
    with pytest.raises(ConfigError, match="unknown preset 'huge'; choose one of tiny, cpu, gpu, article"):
        train_gan(out=out, **{**TINY, "preset": "huge"})
    with pytest.raises(ConfigError, match=r"unknown key gan.los \(did you mean gan.loss\?\)"):
        train_gan(out=out, overrides=["gan.los=bce"], **TINY)
    with pytest.raises(ConfigError, match="loss must be one of hinge, bce"):
        train_gan(out=out, overrides=["gan.loss=wasserstein"], **TINY)
    with pytest.raises(ConfigError, match="gan.mismatch must be true or false"):
        train_gan(out=out, overrides=["gan.mismatch=3"], **TINY)
    with pytest.raises(ConfigError, match="4 x a power of two"):
        train_gan(out=out, overrides=["data.resolution=28"], **TINY)
    with pytest.raises(GanStageError, match="--clip-from .*missing: folder not found"):
        train_gan(out=out, **{**TINY, "clip_from": str(tmp_path / "missing")})
    with pytest.raises(GanStageError, match="no trained CLIP there"):
        train_gan(out=out, **{**TINY, "clip_from": str(tmp_path)})
    unclip = tmp_path / "unclip"
    unclip.mkdir()
    index = {"format": "dalle2", "format_version": 1, "kind": "unclip", "components": {"clip": {}, "prior": {}}}
    (unclip / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(GanStageError, match="train the GAN into its own folder"):
        train_gan(out=str(unclip), **TINY)
    assert not Path(out).exists()
    assert main(["train", "gan", "--out", out, "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_article_preset_is_the_articles_recipe_and_cpu_adds_mode_seeking():
    from dalle2.stages.gan_stage import resolve

    config, keys = resolve({"preset": "article"})
    assert (config.train.learning_rate, config.train.batch_size, config.data.resolution) == (2e-4, 64, 28)
    assert (keys["loss"], keys["beta1"], keys["z_dim"], keys["arch"]) == ("bce", 0.5, 100, "article")
    assert (keys["mismatch"], keys["ma_gp"], keys["diffaugment"], keys["mode_seeking"]) == (False, 0.0, False, 0.0)
    assert resolve({"preset": "cpu"})[1]["mode_seeking"] == 0.1
