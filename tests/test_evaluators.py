"""The shipped evaluator networks load with no training step and still do their job."""

import json

import numpy as np
import pytest
import torch

from dalle2.eval.networks import ConvNet, ConvNetConfig, EvaluatorError, load_evaluator, save_evaluator, shipped_dir

SHIPPED = ["shapes-attr-v1", "fashion-mnist-v1", "clip-shapes-v1"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_evaluator_loads_frozen_with_its_record(name):
    model, meta = load_evaluator(name)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert (
        meta["format_version"] == 1
        and meta["name"] == name
        and meta["trained_with"].startswith("dalle2 train evaluators")
    )
    size = sum(f.stat().st_size for f in (shipped_dir() / name).iterdir())
    assert size < 6_000_000


def test_fashion_classifier_meets_its_accuracy_on_real_test_images():
    _, meta = load_evaluator("fashion-mnist-v1")
    assert meta["test_accuracy"] >= 0.93
    from dalle2.data import open_dataset

    try:
        test = open_dataset("fashion-mnist", split="test")
    except Exception:
        pytest.skip("Fashion-MNIST not installed")
    from dalle2.eval.evaluate import FeatureNet

    net = FeatureNet("fashion-mnist-v1")
    from dalle2.data.base import tensor_to_pil

    idx = range(0, 10_000, 10)
    _, logits = net.run([tensor_to_pil(test[i]["image"]) for i in idx])
    accuracy = float((logits.argmax(1) == np.asarray(test.labels)[list(idx)]).mean())
    assert accuracy >= 0.91  # 1,000 test images: within sampling error of the recorded full-test accuracy


def test_shapes_feature_space_separates_degraded_images_from_real():
    from PIL import Image

    from dalle2.eval import metrics
    from dalle2.eval import prompts as P
    from dalle2.eval.evaluate import FEATURES, FeatureNet

    net = FeatureNet(FEATURES["shapes"])
    specs = P.shapes_prompts(num_prompts=8)
    a = [P.render_real(s, 64, np.random.default_rng([1, i])) for i, s in enumerate(specs)]
    b = [P.render_real(s, 64, np.random.default_rng([2, i])) for i, s in enumerate(specs)]
    blurred = [im.resize((16, 16), Image.Resampling.BILINEAR).resize((64, 64), Image.Resampling.BICUBIC) for im in b]
    fa, fb, fblur = (net.run(x)[0] for x in (a, b, blurred))
    floor = metrics.fd(fa, fb)
    assert fa.shape == (len(specs), 128)
    assert metrics.fd(fa, fblur) > 5 * floor


def test_round_trip_and_errors(tmp_path):
    model = ConvNet(ConvNetConfig(widths=(8,), feature_dim=4, heads={"class": 3})).eval()
    save_evaluator(model, tmp_path / "m", {"name": "m"})
    loaded, meta = load_evaluator(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x)["class"], loaded(x)["class"])
    with pytest.raises(EvaluatorError, match="not found"):
        load_evaluator("no-such-evaluator")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["format_version"] = 99
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(EvaluatorError, match="version 99"):
        load_evaluator(tmp_path / "m")
