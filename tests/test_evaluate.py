"""End-to-end `dalle2 eval`: real images score near perfect, noise scores badly, bad input is explained."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalle2 import pipeline
from dalle2.cli import main
from dalle2.eval import evaluate as E
from dalle2.eval import prompts as P


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def real_shapes(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("real")
    assert (
        main(
            [
                "eval-prompts",
                "--data",
                "shapes",
                "--quick",
                "-o",
                str(root / "p.jsonl"),
                "--render-real",
                str(root / "images"),
                "--resolution",
                "64",
            ]
        )
        == 0
    )
    return root / "images", root / "p.jsonl"


def test_real_images_score_near_perfect_with_fd_near_floor(capsys, tmp_path, real_shapes):
    images, prompts = real_shapes
    code, stdout, stderr = run(capsys, "eval", "--images", images, "--prompts", prompts, "--out", tmp_path)
    assert code == 0, stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    for split in P.SPLITS:
        assert report["faithfulness"][split]["overall"] >= 0.99
    fid = report["fidelity"]
    assert fid["n_generated"] == len(P.shapes_prompts(quick=True)) * P.QUICK_IMAGES
    assert fid["fd"] <= 1.5 * fid["fd_floor"] + 1e-3
    assert fid["precision"] > 0.6 and fid["recall"] > 0.6
    assert abs(report["clip_score"]["generated"] - report["clip_score"]["real"]) < 2.0
    assert (tmp_path / "samples_train.png").is_file() and (tmp_path / "samples_heldout.png").is_file()
    assert "| train |" in (tmp_path / "eval.md").read_text()


def test_noise_images_score_near_zero_with_large_fd(capsys, tmp_path, real_shapes):
    _, prompts = real_shapes
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise"
    noise.mkdir()
    for record in P.read_jsonl(prompts):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise / record["file_name"])
    code, _, stderr = run(capsys, "eval", "--images", noise, "--prompts", prompts, "--out", tmp_path / "out")
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert report["faithfulness"]["train"]["overall"] <= 0.1
    assert report["fidelity"]["fd"] > 10 * report["fidelity"]["fd_floor"]
    assert report["fidelity"]["precision"] < 0.1


class OraclePipeline:
    """A stand-in model for exercising `dalle2 eval MODEL_DIR`: renders the ground truth of known prompts."""

    resolution = 32

    def __init__(self):
        self.by_prompt = {s["prompt"]: s for s in P.shapes_prompts(quick=True)}

    def __call__(self, prompts, n=1, seed=0):
        return [
            P.render_real(self.by_prompt[p], self.resolution, np.random.default_rng([seed, i]))
            for i, p in enumerate(prompts)
            for _ in range(n)
        ]

    def settings(self):
        return {"sampler": "oracle", "steps": 0}


def test_eval_model_dir_samples_scores_and_reports_speed(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(pipeline.LOADERS, "test-oracle", lambda path, index: OraclePipeline())
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(
        json.dumps({"format": "dalle2", "format_version": 1, "kind": "test-oracle"})
    )
    code, stdout, stderr = run(capsys, "eval", model, "--data", "shapes", "--quick", "--out", tmp_path / "e")
    assert code == 0, stderr
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["resolution"] == 32 and report["quick"] is True
    assert report["sampling"]["images_per_second"] > 0 and report["sampling"]["settings"] == {
        "sampler": "oracle",
        "steps": 0,
    }
    assert report["faithfulness"]["heldout"]["overall"] >= 0.99
    assert "images/s" in stdout


def test_eval_progress_bar_counts_images_and_no_progress_turns_it_off(capsys, tmp_path, monkeypatch):
    from dalle2.eval import evaluate as E

    monkeypatch.setitem(pipeline.LOADERS, "test-oracle", lambda path, index: OraclePipeline())
    model = tmp_path / "model"
    model.mkdir()
    index = {"format": "dalle2", "format_version": 1, "kind": "test-oracle"}
    (model / "model_index.json").write_text(json.dumps(index))
    bars = []

    class Bar:  # records what the eval asks of tqdm
        def __init__(self, **kwargs):
            self.kwargs, self.n = kwargs, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, k):
            self.n += k

    monkeypatch.setattr(E, "tqdm", Bar)
    for extra in ([], ["--no-progress"]):
        code, _, stderr = run(capsys, "eval", model, "--data", "shapes", "--quick", "--out", tmp_path / "e", *extra)
        assert code == 0, stderr
    images = json.loads((tmp_path / "e" / "eval.json").read_text())["sampling"]["images"]
    assert [b.kwargs["unit"] for b in bars] == ["img", "img"]
    assert [(b.kwargs["total"], b.n) for b in bars] == [(images, images)] * 2
    assert [b.kwargs["disable"] for b in bars] == [None, True]  # None: on when stderr is a terminal


def test_class_dataset_accuracy_on_real_images(capsys, tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed (apt install dataset-fashion-mnist)")
    assert (
        main(
            [
                "eval-prompts",
                "--data",
                "fashion-mnist",
                "--quick",
                "-o",
                str(tmp_path / "p.jsonl"),
                "--render-real",
                str(tmp_path / "img"),
            ]
        )
        == 0
    )
    code, _, stderr = run(
        capsys, "eval", "--images", tmp_path / "img", "--prompts", tmp_path / "p.jsonl", "--out", tmp_path / "e"
    )
    assert code == 0, stderr
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["class_accuracy"]["accuracy"] >= 0.88 and len(report["class_accuracy"]["per_class"]) == 10
    assert report["fidelity"]["fd"] <= 1.5 * report["fidelity"]["fd_floor"] + 1e-3


def test_bad_inputs(capsys, tmp_path, real_shapes):
    images, prompts = real_shapes
    broken = tmp_path / "broken"
    broken.mkdir()
    records = P.read_jsonl(prompts)
    for record in records[1:]:
        (broken / record["file_name"]).symlink_to(images / record["file_name"])
    (broken / records[2]["file_name"]).unlink()
    (broken / records[2]["file_name"]).write_bytes(b"not a png")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"prompt": "a red circle"}\n{oops\n')
    old = tmp_path / "old"
    old.mkdir()
    (old / "model_index.json").write_text(json.dumps({"format": "dalle2", "format_version": 0, "kind": "unclip"}))
    cases = [
        (["eval", "--images", broken, "--prompts", prompts], "2 of 384 images could not be read"),
        (["eval", "--images", tmp_path / "nope", "--prompts", prompts], "images folder not found"),
        (["eval", "--images", images, "--prompts", bad_jsonl], "bad.jsonl:2: not valid JSON"),
        (["eval", "--images", images, "--prompts", tmp_path / "none.jsonl"], "prompts file not found"),
        (["eval", "--images", images], "both --images DIR and --prompts FILE"),
        (["eval", tmp_path / "nomodel"], "model folder not found"),
        (["eval", tmp_path], "not a dalle2 pipeline folder"),
        (["eval", old], "format version 0"),
        (["eval", tmp_path, "--data", "cifar"], "no evaluator networks for 'cifar'"),
    ]
    for argv, message in cases:
        code, _, stderr = run(capsys, *argv, "--out", tmp_path / "out")
        assert code == 2 and message in stderr, (argv, stderr)


def test_images_to_tensor_pads_mnist_sized_images():
    x = E.images_to_tensor([Image.new("RGB", (28, 28), (255, 255, 255))], 32)
    assert (
        x.shape == (1, 3, 32, 32) and x[0, :, 0, 0].tolist() == [-1, -1, -1] and x[0, :, 16, 16].tolist() == [1, 1, 1]
    )


def test_folder_dataset_with_chosen_evaluators(capsys, tmp_path):
    from dalle2.data.shapes import caption_scene, render, sample_scene

    folder = tmp_path / "folder"
    folder.mkdir()
    lines = []
    for i in range(40):
        scene = sample_scene(np.random.default_rng(i))
        render(scene, 64).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": caption_scene(scene, np.random.default_rng(i))}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    data = f"folder:{folder}"
    code, _, stderr = run(capsys, "eval-prompts", "--data", data, "-o", tmp_path / "p.jsonl")
    assert code == 2 and "--features" in stderr
    assert (
        main(
            [
                "eval-prompts",
                "--data",
                data,
                "--quick",
                "--features",
                "clip-shapes-v1",
                "--clip",
                "clip-shapes-v1",
                "-o",
                str(tmp_path / "p.jsonl"),
            ]
        )
        == 0
    )
    records = P.read_jsonl(tmp_path / "p.jsonl")
    assert len(records) == 20 and {r["prompt"] for r in records} <= {json.loads(x)["text"] for x in lines}
    rng = np.random.default_rng(0)
    (tmp_path / "noise").mkdir()
    for r in records:
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "noise" / r["file_name"])
    code, _, stderr = run(
        capsys, "eval", "--images", tmp_path / "noise", "--prompts", tmp_path / "p.jsonl", "--out", tmp_path / "e"
    )
    assert code == 0, stderr
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["fidelity"]["feature_space"] == "FD_clip-shapes-v1"
    assert report["fidelity"]["fd"] > 10 * report["fidelity"]["fd_floor"]
    assert report["clip_score"]["real"] > report["clip_score"]["generated"] + 20
    assert "faithfulness" not in report and "class_accuracy" not in report


class _TableFeatures:
    """A stand-in FeatureNet: each image's features are a fixed row chosen by its top-left pixel's red value."""

    name = "table"

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def run(self, images, batch_size=256):
        return np.stack([self.rows[im.getpixel((0, 0))[0]] for im in images]), None


def test_kid_spread_is_reported_only_when_subsets_differ():
    rows = np.random.default_rng(0).normal(size=(256, 8))
    images = [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(256)]
    net = _TableFeatures(rows)
    # 40 generated vs 40 real: every KID subset would be the whole of both sets, so there is no spread.
    whole = E._fidelity(net, images[:40], images[40:80], images[80:120])
    assert whole["kid_subset_size"] == 40 and whole["kid_std"] is None
    # 60 generated vs 40 real: subsets of 40 drawn from 60 differ, so the spread is real and positive.
    drawn = E._fidelity(net, images[120:180], images[40:80], images[80:120])
    assert drawn["kid_subset_size"] == 40 and drawn["kid_std"] > 0

    def table(fidelity):
        report = {"dataset": "shapes", "resolution": 4, "sampling": {}, "fidelity": fidelity, "clip_score": {}}
        return E.markdown(report).split("|---|---|---|---|---|---|\n")[1].splitlines()[0]

    assert "±" not in table(whole) and f"± {drawn['kid_std']:.2g}" in table(drawn)
