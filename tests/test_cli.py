"""End-to-end runs of the foundation commands, asserting real outputs."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalle2.cli import main
from dalle2.data.webdataset import write_shards
from tests.test_idx import make_split


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("data", "train", "eval", "eval-prompts", "config"):
        assert f"    {command}" in text
    # python -m dalle2 is the same program
    result = subprocess.run(
        [sys.executable, "-m", "dalle2", "data", "--help"], capture_output=True, text=True, check=True
    )
    assert "preview" in result.stdout and "stats" in result.stdout


COMMANDS = [
    ["data", "preview"], ["data", "stats"], ["train", "tokenizer"], ["train", "clip"], ["train", "prior"],
    ["train", "decoder"], ["train", "upsampler"], ["train", "all"], ["train", "gan"], ["train", "evaluators"],
    ["generate"], ["vary"], ["interpolate"], ["text-diff"], ["edit"], ["serve"], ["eval"], ["eval-prompts"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_help_shows_only_informative_defaults(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "usage: dalle2 " + " ".join(command) in text
    for noise in ("(default: None)", "(default: True)", "(default: False)", "(default: [])"):
        assert noise not in text, (command, noise)
    assert not re.search(r"\(default: [^)]*\) \(default:", text)  # a help naming its default gets no second one


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    lines = []
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (48, 40), color).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a plain {['red', 'green', 'blue'][i]} picture"}))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines.append(json.dumps({"file_name": "broken.png", "text": "broken"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    root = tmp_path / "fmnist"
    root.mkdir()
    make_split(root, 20, "train", gz=True, seed=0)
    make_split(root, 10, "t10k", gz=False, seed=1)
    return root


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    samples = [
        (Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), f"noise number {i}") for i in range(10)
    ]
    write_shards(samples, tmp_path / "shards", per_shard=4)
    return tmp_path / "shards"


def test_preview_and_stats_for_every_dataset_kind(capsys, tmp_path, folder, idx_dir, shards):
    specs = {
        "shapes": "shapes",
        "fashion": f"fashion-mnist:{idx_dir}",
        "folder": f"folder:{folder}",
        "webdataset": f"webdataset:{shards}/*.tar",
    }
    for name, spec in specs.items():
        out = tmp_path / f"{name}.png"
        code, stdout, stderr = run(capsys, "data", "preview", spec, "-n", "6", "-o", str(out), "--cell", "48")
        assert code == 0, stderr
        grid = Image.open(out)
        # 6 images in a 3x2 grid of 48-pixel cells plus a caption sheet underneath
        assert grid.width >= 3 * 48 and grid.height > 2 * 48 + 3 * 12
        code, stdout, stderr = run(capsys, "data", "stats", spec, "--json", "--limit", "50")
        assert code == 0, stderr
        result = json.loads(stdout)
        assert result["vocabulary_size"] > 1 and result["caption_words"]["max"] >= result["caption_words"]["min"] >= 1
        assert list(result["image_shapes"]) == ["3x32x32"]
    # sizes: folder skipped its broken image, shapes is the declared 50k, webdataset is streamed
    assert json.loads(run(capsys, "data", "stats", specs["folder"], "--json")[1])["size"] == 3
    assert json.loads(run(capsys, "data", "stats", "shapes", "--json", "--limit", "10")[1])["size"] == 50_000


def test_preview_grid_shows_the_real_images(capsys, tmp_path):
    out = tmp_path / "grid.png"
    assert run(capsys, "data", "preview", "shapes", "-n", "1", "-o", str(out), "--cell", "32")[0] == 0
    from dalle2.data import open_dataset, tensor_to_pil

    expected = np.asarray(tensor_to_pil(open_dataset("shapes")[0]["image"]))
    cell = np.asarray(Image.open(out).convert("RGB"))[2:34, 2:34]
    # the number label covers the top-left corner; the rest of the cell is the sample's pixels
    assert np.array_equal(cell[16:], expected[16:])


def test_stats_text_report(capsys):
    code, stdout, _ = run(capsys, "data", "stats", "shapes", "--limit", "200")
    assert code == 0
    assert "vocabulary:" in stdout and "caption length histogram" in stdout and "kind:" in stdout


def test_bad_inputs_give_one_line_errors(capsys, tmp_path):
    cases = [
        (["data", "preview", "nosuch"], "unknown dataset 'nosuch'"),
        (["data", "preview", f"folder:{tmp_path / 'missing'}"], "does not exist"),
        (["data", "stats", f"fashion-mnist:{tmp_path}"], "fashion-mnist"),
        (["data", "preview", "shapes", "--split", "validation"], "split"),
        (["config", "--preset", "huge"], "unknown preset"),
    ]
    for argv, message in cases:
        code, _, stderr = run(capsys, *argv)
        assert code == 2 and message in stderr and "Traceback" not in stderr, (argv, stderr)
    with pytest.raises(SystemExit):  # argparse rejects absurd values before anything runs
        main(["data", "preview", "shapes", "-n", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_train_tokenizer_writes_a_working_tokenizer(capsys, tmp_path):
    code, stdout, stderr = run(
        capsys, "train", "tokenizer", "--data", "shapes", "--out", str(tmp_path), "--preset", "tiny", "--limit", "500"
    )
    assert code == 0, stderr
    assert "preset: tiny" in stdout  # the resolved config is printed
    from dalle2.text import Tokenizer

    tokenizer = Tokenizer.load(tmp_path / "tokenizer")
    assert (
        tokenizer.decode(tokenizer.encode("a red circle above a blue square")[0][0])
        == "a red circle above a blue square"
    )
    assert (tmp_path / "tokenizer" / "config.yaml").is_file()
