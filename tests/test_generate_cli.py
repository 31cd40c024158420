"""dalle2 generate / vary / interpolate / text-diff / edit, end to end on the tiny pipeline (32x32 output)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dalle2
from dalle2 import generate_cli as G
from dalle2.cli import main
from dalle2.models.decoder import ImageDiffusion
from dalle2.models.prior import DiffusionPrior

PROMPT = "a red circle above a blue square"
CELL = 32  # = the output resolution: tiles are the images pixel for pixel


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def usage_error(capsys, *argv: str) -> str:
    """argparse's own errors: exit status 2 and the message on stderr."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def pipe(tiny_unclip: Path):
    return dalle2.load(tiny_unclip)


@pytest.fixture(scope="module")
def picture(pipe, tmp_path_factory) -> Path:
    """A 32x32 picture (the output resolution) saved as PNG."""
    path = tmp_path_factory.mktemp("inputs") / "picture.png"
    pipe(PROMPT, 1, seed=11)[0].save(path)
    return path


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def tile(grid: Image.Image, index: int, ncols: int, cell: int = CELL, top: int = 0) -> Image.Image:
    r, c = divmod(index, ncols)
    x, y = G.PAD + c * (cell + G.PAD), top + G.PAD + r * (cell + G.PAD)
    return grid.crop((x, y, x + cell, y + cell))


def grid_size(ncols: int, nrows: int, cell: int = CELL) -> tuple[int, int]:
    return ncols * (cell + G.PAD) + G.PAD, nrows * (cell + G.PAD) + G.PAD


def assert_tiles(grid: Image.Image, images: list[Image.Image], ncols: int, first: int = 0, top: int = 0) -> None:
    for k, image in enumerate(images):
        assert np.array_equal(arr(tile(grid, first + k, ncols, top=top)), arr(image)), f"tile {first + k}"


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name]


# ----------------------------------------------------------------------------------------- help
def test_help_lists_the_commands_and_their_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ("generate", "vary", "interpolate", "text-diff", "edit"):
        assert f"    {command} " in text
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--separate", "--prompts", "--sampler", "--prior-steps", "--batch-size", "out-000.png"):
        assert option in text
    assert "(default: None)" not in text and "(default: 8)" in text
    from dalle2.diffusion import SAMPLERS

    assert G.SAMPLERS == SAMPLERS


# ------------------------------------------------------------------------------------- generate
def test_generate_grid_is_the_pipelines_images(capsys, tiny_unclip, pipe, tmp_path):
    out = tmp_path / "one.png"
    code, stdout, _ = run(capsys, "generate", PROMPT, "--model", tiny_unclip, "-n", "3", "--seed", "5",
                          "-o", out, "--cell", CELL)  # fmt: skip
    assert code == 0
    assert f"wrote {out}" in stdout and "seed 5" in stdout and "images/s" in stdout and "3 images of 32x32" in stdout
    grid = Image.open(out)
    assert grid.size == grid_size(3, 1)
    assert_tiles(grid, pipe(PROMPT, 3, seed=5), ncols=3)
    # the same command again: the same file; another seed: other images
    again = tmp_path / "again.png"
    args = ["--model", tiny_unclip, "-n", 3, "--cell", CELL]
    assert run(capsys, "generate", PROMPT, *args, "--seed", 5, "-o", again)[0] == 0
    assert np.array_equal(arr(Image.open(again)), arr(grid))
    other = tmp_path / "other.png"
    assert run(capsys, "generate", PROMPT, *args, "--seed", 6, "-o", other)[0] == 0
    assert not np.array_equal(arr(Image.open(other)), arr(grid))
    assert no_temp_files(tmp_path)


def test_generate_default_cell_and_square_layout(capsys, tiny_unclip, tmp_path):
    out = tmp_path / "nine.png"
    assert run(capsys, "generate", PROMPT, "--model", tiny_unclip, "-n", 9, "-o", out)[0] == 0
    # 9 > 8 images: 3 columns; 32-pixel images shown at 64 pixels
    assert G.default_cell(32) == 64
    assert Image.open(out).size == grid_size(3, 3, cell=64)


def test_generate_one_row_per_prompt(capsys, tiny_unclip, pipe, tmp_path):
    out = tmp_path / "rows.png"
    prompts = [PROMPT, "a green triangle"]
    code, stdout, _ = run(capsys, "generate", *prompts, "--model", tiny_unclip, "-n", 2, "--seed", 2,
                          "-o", out, "--cell", CELL)  # fmt: skip
    assert code == 0 and "2 prompts x 2" in stdout
    grid = Image.open(out)
    row_h = G.CAPTION_BAND + CELL + 2 * G.PAD
    assert grid.size == (max(grid_size(2, 1)[0], G.MIN_CAPTION_WIDTH), 2 * row_h)
    images = pipe(prompts, 2, seed=2)
    for r in range(2):
        assert_tiles(grid, images[2 * r : 2 * r + 2], ncols=2, top=r * row_h + G.CAPTION_BAND)
        band = arr(grid.crop((0, r * row_h, grid.width, r * row_h + G.CAPTION_BAND)))
        assert (band < 100).any(), "the prompt is written above its row"
    # the same seed, another prompt: other images (the prompt reaches the images)
    solo_a = pipe(PROMPT, 2, seed=9)
    solo_b = pipe("a green triangle", 2, seed=9)
    assert not any(np.array_equal(arr(a), arr(b)) for a, b in zip(solo_a, solo_b, strict=True))


def test_generate_separate_files(capsys, tiny_unclip, pipe, tmp_path):
    out = tmp_path / "sub" / "shot.png"  # the missing folder is created
    code, stdout, _ = run(capsys, "generate", PROMPT, "--model", tiny_unclip, "-n", 3, "--seed", 1, "-o", out,
                          "--separate")  # fmt: skip
    assert code == 0
    files = sorted((tmp_path / "sub").glob("*.png"))
    assert [f.name for f in files] == ["shot-000.png", "shot-001.png", "shot-002.png"]
    for f, image in zip(files, pipe(PROMPT, 3, seed=1), strict=True):
        assert Image.open(f).size == (32, 32) and np.array_equal(arr(Image.open(f)), arr(image))
    records = [json.loads(line) for line in (tmp_path / "sub" / "shot.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in records] == [f.name for f in files]
    assert {r["text"] for r in records} == {PROMPT} and {r["seed"] for r in records} == {1}
    assert "shot-000.png" in stdout


def test_generate_prompts_file_into_a_folder(capsys, tiny_unclip, pipe, tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("# shapes\na red circle\n\n   \na green triangle\n# done\na blue square\n")
    out = tmp_path / "samples"
    code, _, _ = run(capsys, "generate", "--prompts", prompts_file, "--model", tiny_unclip, "-n", 2, "-o", out,
                     "--separate", "--batch-size", 4)  # fmt: skip
    assert code == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i:03d}.png" for i in range(6)]
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    wanted = ["a red circle", "a green triangle", "a blue square"]
    assert [r["text"] for r in records] == [p for p in wanted for _ in range(2)]
    for f, image in zip(files, pipe(wanted, 2, seed=0, batch_size=4), strict=True):
        assert np.array_equal(arr(Image.open(f)), arr(image))
    # the folder is a dalle2 image folder: metadata.jsonl names every file
    assert {r["file_name"] for r in records} == {f.name for f in files}
    # a grid into a folder: FOLDER/out.png
    assert run(capsys, "generate", "a red circle", "--model", tiny_unclip, "-n", 1, "-o", f"{out}/")[0] == 0
    assert Image.open(out / "out.png").size == grid_size(1, 1, cell=64)


def test_many_prompts_imply_separate(capsys, tiny_unclip, tmp_path):
    prompts_file = tmp_path / "many.txt"
    prompts_file.write_text("\n".join(f"a {c} circle" for c in ["red", "green", "blue"] * 6) + "\n")  # 18 prompts
    code, stdout, _ = run(capsys, "generate", "--prompts", prompts_file, "--model", tiny_unclip, "-n", 1,
                          "-o", tmp_path / "many.png", "--steps", 1, "--prior-steps", 1)  # fmt: skip
    assert code == 0 and "one file per image" in stdout
    assert len(list(tmp_path.glob("many-*.png"))) == 18 and not (tmp_path / "many.png").exists()


def test_generate_options_reach_the_models(capsys, tiny_unclip, tmp_path, monkeypatch):
    decoder_calls, prior_calls = [], []
    sample, prior_sample = ImageDiffusion.sample, DiffusionPrior.sample

    def spy(self, noise, **kwargs):
        if self.config.role == "decoder":
            decoder_calls.append((kwargs["guidance_scale"], kwargs["steps"], kwargs["sampler"]))
        return sample(self, noise, **kwargs)

    def prior_spy(self, *args, **kwargs):
        prior_calls.append((kwargs["steps"], kwargs["guidance_scale"]))
        return prior_sample(self, *args, **kwargs)

    monkeypatch.setattr(ImageDiffusion, "sample", spy)
    monkeypatch.setattr(DiffusionPrior, "sample", prior_spy)
    outputs = {}
    for g in ("1", "3"):
        outputs[g] = tmp_path / f"g{g}.png"
        code, _, _ = run(capsys, "generate", PROMPT, "--model", tiny_unclip, "-n", 2, "-o", outputs[g],
                         "--guidance", g, "--steps", 3, "--sampler", "ddpm", "--prior-steps", 2,
                         "--prior-guidance", 2.5)  # fmt: skip
        assert code == 0
    assert decoder_calls == [(1.0, 3, "ddpm"), (3.0, 3, "ddpm")]
    assert prior_calls == [(2, 2.5), (2, 2.5)]
    assert not np.array_equal(arr(Image.open(outputs["1"])), arr(Image.open(outputs["3"])))


def test_one_subprocess_run(tiny_unclip, tmp_path):
    """The real program: exit status 2 and one line on stderr, no traceback (a success costs ~10 s of imports)."""
    result = subprocess.run(
        [sys.executable, "-m", "dalle2", "vary", str(tmp_path / "nope.png"), "--model", str(tiny_unclip)],
        capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"dalle2: error: image not found: {tmp_path / 'nope.png'}\n"


# ------------------------------------------------------------------------------- image features
def test_vary_grid(capsys, tiny_unclip, pipe, picture, tmp_path):
    out = tmp_path / "vary.png"
    code, stdout, _ = run(capsys, "vary", picture, "--model", tiny_unclip, "-n", 3, "--seed", 4, "-o", out,
                          "--cell", CELL)  # fmt: skip
    assert code == 0 and "3 variations" in stdout
    grid = Image.open(out)
    assert grid.size == grid_size(4, 1)
    assert_tiles(grid, [Image.open(picture)], ncols=4)  # the input first
    assert_tiles(grid, pipe.vary(Image.open(picture), 3, seed=4), ncols=4, first=1)
    # in batches of 2, without a bar: the images of the pipeline called the same way
    code, _, _ = run(capsys, "vary", picture, "--model", tiny_unclip, "-n", 3, "--seed", 4, "-o", out,
                     "--cell", CELL, "--batch-size", 2, "--no-progress")  # fmt: skip
    assert code == 0
    assert_tiles(Image.open(out), pipe.vary(Image.open(picture), 3, seed=4, batch_size=2), ncols=4, first=1)


def test_interpolate_row(capsys, tiny_unclip, pipe, picture, tmp_path):
    other = tmp_path / "other.png"
    pipe("a green triangle", 1, seed=3)[0].save(other)
    out = tmp_path / "interp.png"
    code, _, _ = run(capsys, "interpolate", picture, other, "--model", tiny_unclip, "--steps", 5, "-o", out,
                     "--cell", CELL, "--seed", 2)  # fmt: skip
    assert code == 0
    grid = Image.open(out)
    assert grid.size == grid_size(5, 1)
    assert_tiles(grid, pipe.interpolate(picture, other, 5, seed=2), ncols=5)


def test_text_diff_row(capsys, tiny_unclip, pipe, picture, tmp_path):
    out = tmp_path / "diff.png"
    code, _, _ = run(capsys, "text-diff", picture, "--from", "a red circle", "--to", "a blue circle",
                     "--model", tiny_unclip, "--steps", 4, "--max-theta", 0.8, "-o", out, "--cell", CELL)  # fmt: skip
    assert code == 0
    grid = Image.open(out)
    assert grid.size == grid_size(4, 1)
    expected = pipe.text_diff(picture, "a red circle", "a blue circle", 4, seed=0, max_theta=0.8)
    assert_tiles(grid, expected, ncols=4)
    assert not np.array_equal(arr(expected[0]), arr(expected[-1]))


def test_edit_keeps_the_unmasked_pixels(capsys, tiny_unclip, picture, tmp_path):
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (4, 10, 20, 26))  # white = edit
    mask_path = tmp_path / "mask.png"
    mask.save(mask_path)
    edited = np.asarray(mask) >= 128
    out = tmp_path / "edit.png"
    code, _, _ = run(capsys, "edit", picture, mask_path, "a green triangle", "--model", tiny_unclip, "-n", 2,
                     "-o", out, "--cell", CELL)  # fmt: skip
    assert code == 0
    grid = Image.open(out)
    assert grid.size == grid_size(4, 1)  # input, mask, 2 edits
    original = arr(Image.open(picture))
    assert np.array_equal(arr(tile(grid, 0, 4)), original)
    assert np.array_equal(arr(tile(grid, 1, 4))[..., 0] == 255, edited)
    for k in (2, 3):
        result = arr(tile(grid, k, 4))
        assert np.array_equal(result[~edited], original[~edited]), "an unmasked pixel changed"
        assert np.abs(result[edited] - original[edited]).mean() > 5, "the masked region did not change"


def test_edit_of_a_wide_image_keeps_the_masked_region_in_place(capsys, tiny_unclip, tmp_path):
    # 64x32: the CLI centre-crops image and mask alike, so the pixels outside the mask stay as given
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (16, 0, 32, 32))
    mask = Image.new("L", (64, 32), 0)
    mask.paste(255, (40, 0, 48, 32))  # columns 24..32 of the centre crop
    image.save(tmp_path / "wide.png")
    mask.save(tmp_path / "wide-mask.png")
    out = tmp_path / "wide-edit.png"
    code, _, _ = run(capsys, "edit", tmp_path / "wide.png", tmp_path / "wide-mask.png", "a green circle",
                     "--model", tiny_unclip, "-n", 1, "-o", out, "--cell", CELL)  # fmt: skip
    assert code == 0
    result = arr(tile(Image.open(out), 2, 3))
    crop = arr(image.crop((16, 0, 48, 32)))
    assert np.array_equal(result[:, :24], crop[:, :24])
    assert np.abs(result[:, 24:] - crop[:, 24:]).mean() > 5


# ----------------------------------------------------------------------------------- bad input
@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    not_pipeline = tmp_path / "empty-folder"
    not_pipeline.mkdir()
    small_mask = tmp_path / "small-mask.png"
    Image.new("L", (16, 16), 255).save(small_mask)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    return {"corrupt": corrupt, "not_pipeline": not_pipeline, "small_mask": small_mask, "a_file": a_file}


def test_bad_input_is_one_line_and_exit_2(capsys, tiny_unclip, picture, bad_files, tmp_path):
    m = ["--model", str(tiny_unclip)]
    out = tmp_path / "never.png"
    cases = [
        (["generate", PROMPT, "--model", tmp_path / "missing", "-o", out], "model folder not found"),
        (["generate", PROMPT, "--model", bad_files["not_pipeline"], "-o", out], "not a dalle2 pipeline folder"),
        (["generate", PROMPT, "--model", bad_files["a_file"], "-o", out], "is a file"),
        (["vary", tmp_path / "missing.png", *m, "-o", out], f"error: image not found: {tmp_path / 'missing.png'}\n"),
        (["vary", bad_files["corrupt"], *m, "-o", out], "not a readable image"),
        (["interpolate", picture, bad_files["corrupt"], *m, "-o", out], "not a readable image"),
        (["edit", picture, bad_files["small_mask"], "a circle", *m, "-o", out],
         "the mask is 16x16 but the image is 32x32"),
        (["edit", picture, picture, "  ", *m, "-o", out], "empty prompt"),
        (["generate", "", *m, "-o", out], "empty prompt"),
        (["generate", *m, "-o", out], "give at least one prompt"),
        (["generate", "--prompts", tmp_path / "none.txt", *m, "-o", out], "prompts file not found"),
        (["text-diff", picture, "--from", "a red circle", "--to", "a red circle", *m, "-o", out], "same text"),
        (["text-diff", picture, "--from", "", "--to", "a red circle", *m, "-o", out], "empty --from text"),
        (["generate", PROMPT, *m, "-o", tmp_path / "out.jpg"], "only PNG"),
        (["generate", PROMPT, *m, "-o", bad_files["a_file"] / "out.png"], "is a file, not a folder"),
        (["generate", PROMPT, *m, "-o", out, "--separate", "-o", tmp_path / "x.gif"], "only PNG"),
    ]  # fmt: skip
    for argv, message in cases:
        code, stdout, stderr = run(capsys, *argv)
        assert code == 2, argv
        assert stderr.startswith("dalle2: error: ") and message in stderr, (argv, stderr)
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not out.exists() and not (tmp_path / "out.jpg").exists() and not list(tmp_path.glob("x*"))


def test_prompts_file_without_prompts(capsys, tiny_unclip, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    code, _, stderr = run(capsys, "generate", "--prompts", empty, "--model", tiny_unclip, "-o", tmp_path / "o.png")
    assert code == 2 and f"{empty}: no prompts" in stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", PROMPT, "--steps", "0"], "argument --steps: must be from 1 to 1000, got 0"),
        (["generate", PROMPT, "--steps", "-1"], "argument --steps: must be from 1 to 1000, got -1"),
        (["generate", PROMPT, "--steps", "100000"], "argument --steps: must be from 1 to 1000, got 100000"),
        (["generate", PROMPT, "--prior-steps", "0"], "argument --prior-steps: must be from 1 to 1000"),
        (["generate", PROMPT, "-n", "0"], "argument -n: must be from 1 to 10000, got 0"),
        (["generate", PROMPT, "--sampler", "euler"], "argument --sampler: invalid choice: 'euler'"),
        (["generate", PROMPT, "--guidance", "-1"], "argument --guidance: must be at least 0 (1 = no guidance)"),
        (["generate", PROMPT, "--guidance", "nan"], "argument --guidance: must be at least 0 (1 = no guidance)"),
        (["generate", PROMPT, "--seed", "-1"], "argument --seed: must be from 0 to"),
        (["generate", PROMPT, "--batch-size", "0"], "argument --batch-size: must be from 1"),
        (["generate", PROMPT, "--steps", "ten"], "argument --steps: expected a whole number, got 'ten'"),
        (["vary", "x.png", "-n", "0"], "argument -n: must be from 1 to 1000, got 0"),
        (["interpolate", "a.png", "b.png", "--steps", "1"], "argument --steps: must be from 2 to 64, got 1"),
        (["interpolate", "a.png", "b.png", "--sample-steps", "100000"], "argument --sample-steps: must be from 1"),
        (["text-diff", "x.png", "--from", "a", "--to", "b", "--max-theta", "0"], "argument --max-theta"),
        (["edit", "x.png", "m.png", "p", "--steps", "0"], "argument --steps: must be from 1 to 1000, got 0"),
    ],
)
def test_out_of_range_options_are_usage_errors(capsys, tmp_path, argv, message):
    assert message in usage_error(capsys, *argv, "--model", str(tmp_path))


def test_resolve_model(tmp_path):
    assert G.resolve_model(tmp_path) == tmp_path
    with pytest.raises(G.GenerateError, match="model folder not found"):
        G.resolve_model(tmp_path / "missing")
    with pytest.raises(G.GenerateError, match="empty --model"):
        G.resolve_model("")


def test_resolve_model_names_the_bundled_models(tmp_path, monkeypatch):
    from dalle2 import pipeline

    monkeypatch.setattr(pipeline, "__file__", str(tmp_path / "pipeline.py"))  # an install without the bundle
    with pytest.raises(G.GenerateError, match="no model given and the bundled 'unclip' model is not in this install"):
        G.resolve_model(None)
    for name, folder in pipeline.BUNDLED.items():
        (tmp_path / "assets" / "models" / folder).mkdir(parents=True)
        (tmp_path / "assets" / "models" / folder / "model_index.json").write_text("{}")
        assert G.resolve_model(name) == tmp_path / "assets" / "models" / folder
    assert G.resolve_model(None) == tmp_path / "assets" / "models" / pipeline.BUNDLED["unclip"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gan").mkdir()  # a folder of that name wins over the bundled model
    assert G.resolve_model("gan") == Path("gan")


def test_a_failed_write_leaves_no_file(capsys, tiny_unclip, tmp_path, monkeypatch):
    def full_disk(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "full" / "out.png"
    code, _, stderr = run(capsys, "generate", PROMPT, "--model", tiny_unclip, "-n", 1, "-o", out)
    assert code == 2 and stderr.strip() == f"dalle2: error: cannot write {out}: No space left on device"
    assert list((tmp_path / "full").iterdir()) == []


def test_other_pipeline_kinds(capsys, tmp_path, monkeypatch):
    """generate works with any registered pipeline kind; the unCLIP-only commands and options say so."""
    from dalle2 import pipeline

    class Flat:
        kind, resolution = "flat", 8

        def __call__(self, prompts, n=1, seed=0):
            return [Image.new("RGB", (8, 8), (seed, 100, 200)) for _ in prompts for _ in range(n)]

    monkeypatch.setitem(pipeline.LOADERS, "flat", lambda folder, index: Flat())
    folder = tmp_path / "flat"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"format": "dalle2", "format_version": 1, "kind": "flat"}))
    out = tmp_path / "flat.png"
    assert run(capsys, "generate", "a", "b", "--model", folder, "-n", 2, "--seed", 7, "-o", out, "--cell", 8)[0] == 0
    assert arr(Image.open(out))[G.CAPTION_BAND + G.PAD, G.PAD].tolist() == [7, 100, 200]
    code, _, stderr = run(capsys, "generate", "a", "--model", folder, "--steps", 3, "-o", out)
    assert code == 2 and "--steps: only for unCLIP pipelines" in stderr
    code, _, stderr = run(capsys, "generate", "a", "--model", folder, "--truncation", 0.5, "-o", out)
    assert code == 2 and "--truncation: only for GAN pipelines" in stderr
    code, _, stderr = run(capsys, "vary", out, "--model", folder, "-o", tmp_path / "v.png")
    assert code == 2 and "is a 'flat' pipeline, which has no vary" in stderr
