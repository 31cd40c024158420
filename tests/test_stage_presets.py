"""One resolver for every stage (issue 22): the same values as the four resolvers it replaced, and
``dalle2 config`` prints every section training uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dalle2.config import ConfigError, resolve_stage
from dalle2.presets import STAGE_PRESETS, STAGES

FROZEN = json.loads((Path(__file__).parent / "fixtures" / "stage_presets_before.json").read_text())


def _cases():
    for stage, presets in FROZEN["resolved"].items():
        for preset, cases in presets.items():
            for name in cases:
                yield stage, preset, name


#: preset changes made on purpose after the freeze, each with its evidence: (stage, preset) -> section keys
#: docs/results.md, CLIP, 2026-12-03 (the conv tower), 2026-12-04 (its BatchNorm), 2026-12-05 (max-pool, 3,000 steps)
CHANGED_SINCE = {("clip", "cpu"): {"vision_arch": "conv", "conv_norm": "batch", "conv_downsample": "maxpool"}}
#: train-section defaults changed on purpose after the freeze: (stage, preset) -> {key: (old, new)}
#: docs/results.md, CLIP, 2026-12-05 ("Max-pool downsampling"): 3,000 steps reach the issue's R@1 0.90 in 7.8 min
TRAIN_CHANGED_SINCE = {("clip", "cpu"): {"max_steps": (1500, 3000)}}
#: config keys added after the freeze, with the default every preset leaves them at: section -> keys
ADDED_SINCE = {"data": {"train_length": None}}  # 2026-12-04, sizes the training split for long GPU runs
#: stage-section keys added after the freeze, with the default every preset leaves them at: stage -> keys
#: 2026-12-04: relation and binding twins; the conv tower's norm and downsampling
SECTION_ADDED_SINCE = {"clip": {"hard_negative_kinds": "shape", "conv_norm": "group", "conv_downsample": "stride"}}


@pytest.mark.parametrize(("stage", "preset", "case"), list(_cases()))
def test_resolve_stage_matches_the_old_resolvers(stage, preset, case, tmp_path):
    """Frozen from clip_stage._resolve, prior_stage._resolve, image_stage._resolve and gan_stage.resolve
    before they were replaced (defaults, --set, dedicated options, a shared YAML, the stage's own keys)."""
    spec = FROZEN["cases"][case]
    yaml_file = tmp_path / "shared.yaml"
    yaml_file.write_text(FROZEN["yaml"])
    sets = list(spec.get("sets", [])) + (FROZEN["own"][stage] if spec.get("own") else [])
    options = {key: spec.get(key) for key in ("max_steps", "max_minutes", "data")}
    config, section, keys = resolve_stage(stage, preset, str(yaml_file) if spec.get("config") else None, sets, options)
    expected = FROZEN["resolved"][stage][preset][case]
    expected["section"].update(SECTION_ADDED_SINCE.get(stage, {}))
    expected["section"].update(CHANGED_SINCE.get((stage, preset), {}))
    for key, (old, new) in TRAIN_CHANGED_SINCE.get((stage, preset), {}).items():
        if expected["config"]["train"][key] == old:  # the preset's value, not one a case set
            expected["config"]["train"][key] = new
    for section_name, added in ADDED_SINCE.items():
        expected["config"][section_name].update(added)
    got = json.loads(json.dumps({"config": config.to_dict(), "section": section, "stage": keys}))
    assert got == expected


def test_every_stage_has_the_shared_presets():
    for stage in STAGES:
        assert {"tiny", "cpu", "gpu"} <= set(STAGE_PRESETS[stage])
        for spec in STAGE_PRESETS[stage].values():
            assert {"train", "model", "stage"} <= set(spec)


def test_stage_wrappers_use_the_one_resolver():
    from dalle2.stages import gan_stage, image_stage
    from dalle2.stages.common import resolve_options

    sets = ["train.max_steps=9"]
    opts = {"preset": "tiny", "overrides": sets}
    config, clip, _ = resolve_options("clip", {**opts, "text_encoder": "minilm"})
    assert config.train.max_steps == 9 and clip["text_encoder"] == "minilm"
    # another stage's dedicated option (the CLIP's text encoder) changes nothing
    assert resolve_options("prior", {**opts, "text_encoder": "minilm"}) == resolve_stage("prior", "tiny", None, sets)
    assert image_stage._resolve("decoder", opts) == resolve_stage("decoder", "tiny", None, sets)
    assert gan_stage.resolve(opts)[1] == resolve_stage("gan", "tiny", None, sets)[1]


def test_errors_name_the_valid_choices():
    with pytest.raises(ConfigError, match="unknown preset 'cpuu'; choose one of tiny, cpu, gpu"):
        resolve_stage("decoder", "cpuu")
    with pytest.raises(ConfigError, match="choose one of tiny, cpu, gpu, article"):
        resolve_stage("gan", "huge")
    with pytest.raises(ConfigError, match="unknown stage 'decodr'; choose one of clip, prior, decoder"):
        resolve_stage("decodr", "cpu")
    with pytest.raises(ConfigError, match=r"unknown key decoder.guidance; keys: .*guidance_scale"):
        resolve_stage("decoder", "cpu", sets=["decoder.guidance=2"])
    with pytest.raises(ConfigError, match=r"unknown key prior.pool; keys: pool_size"):
        resolve_stage("prior", "cpu", sets=["prior.pool=2"])
    with pytest.raises(ConfigError, match=r"did you mean gan.z_dim"):
        resolve_stage("gan", "cpu", sets=["gan.zdim=2"])
    with pytest.raises(ConfigError, match=r"unknown config section 'trian' \(did you mean 'train'\?\)"):
        resolve_stage("clip", "cpu", sets=["trian.max_steps=2"])
    with pytest.raises(ConfigError, match="prior.embed_dim is taken from the CLIP"):
        resolve_stage("prior", "cpu", sets=["prior.embed_dim=8"])
    with pytest.raises(ConfigError, match="gan.mismatch must be true or false"):
        resolve_stage("gan", "cpu", sets=["gan.mismatch=maybe"])


def test_the_base_presets_hold_no_train_section_that_no_stage_uses():
    from dalle2.config import PRESETS

    for preset, sections in PRESETS.items():
        train = set(sections.get("train", {}))
        for stage in STAGES:
            assert not train & set(STAGE_PRESETS[stage][preset]["train"]) - {"mixed_precision"}, (preset, stage)


def _config(capsys, *argv):
    from dalle2.cli import main

    main(["config", *argv])
    text = capsys.readouterr().out
    return yaml.safe_load(text)


@pytest.mark.parametrize("preset", ["tiny", "cpu", "gpu"])
def test_dalle2_config_prints_every_stage_as_it_resolves(capsys, preset):
    printed = _config(capsys, "--preset", preset)
    assert set(printed) == {"preset", "data", "text", "train", *STAGES}
    for stage in STAGES:
        config, section, keys = resolve_stage(stage, preset)
        assert printed["train"][stage] == config.to_dict()["train"], stage
        assert printed["data"] == config.to_dict()["data"]
        for key, value in {**section, **keys}.items():
            if stage == "prior" and key in ("embed_dim", "text_width", "max_text_len"):
                assert key not in printed["prior"]  # taken from the CLIP when the stage runs
                continue
            assert json.loads(json.dumps(printed[stage][key])) == json.loads(json.dumps(value)), (stage, key)
    # the bug: the cpu preset printed one train section (batch 64, 3,000 steps) that no stage used
    assert preset != "cpu" or len({json.dumps(printed["train"][stage], sort_keys=True) for stage in STAGES}) > 1


def test_dalle2_config_accepts_every_stage_section(capsys):
    printed = _config(
        capsys,
        "--preset",
        "tiny",
        "--set",
        "decoder.guidance_scale=2",
        "--set",
        "prior.pool_size=99",
        "--set",
        "gan.z_dim=7",
        "--set",
        "train.max_steps=11",
    )
    assert printed["decoder"]["guidance_scale"] == 2
    assert printed["prior"]["pool_size"] == 99 and printed["gan"]["z_dim"] == 7
    assert {train["max_steps"] for train in printed["train"].values()} == {11}
    gan_only = _config(capsys, "--preset", "article")
    assert set(gan_only) == {"preset", "data", "text", "train", "gan"} and gan_only["data"]["resolution"] == 28


def test_dalle2_config_errors_are_usage_errors(capsys):
    from dalle2.cli import main

    for argv, message in (
        (["--set", "decodr.guidance_scale=2"], "unknown config section 'decodr' (did you mean 'decoder'?)"),
        (["--set", "decoder.guidance=2"], "unknown key decoder.guidance"),
        (["--preset", "huge"], "unknown preset 'huge'"),
    ):
        code = main(["config", *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
