import pytest

from dalle2.config import PRESETS, ConfigError, config_from_dict, load_config, parse_overrides


def test_presets_differ_and_resolve():
    tiny, cpu, gpu = (load_config(name) for name in ("tiny", "cpu", "gpu"))
    assert set(PRESETS) == {"tiny", "cpu", "gpu"}
    # the shared presets set no train key a stage sets itself (each stage's train defaults: dalle2.presets)
    assert tiny.train.batch_size == cpu.train.batch_size and gpu.train.mixed_precision == "bf16"
    assert cpu.data.resolution == 32 and cpu.data.output_resolution == 64
    assert gpu.data.resolution == 64 and gpu.data.output_resolution == 256


def test_override_precedence_preset_then_yaml_then_cli(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("train:\n  batch_size: 17\n  learning_rate: 1.0e-3\ndata:\n  dataset: mnist\n")
    from_yaml = load_config("tiny", yaml_file)
    assert from_yaml.train.batch_size == 17  # YAML beats the default (64)
    assert from_yaml.data.resolution == PRESETS["tiny"]["data"]["resolution"]  # preset kept where YAML is silent
    both = load_config("tiny", yaml_file, ["train.batch_size=5"])
    assert both.train.batch_size == 5  # CLI beats YAML
    assert both.train.learning_rate == pytest.approx(1e-3)  # YAML kept where CLI is silent
    assert both.data.dataset == "mnist"


def test_values_are_typed_and_checked():
    config = load_config(
        "cpu", overrides=["train.learning_rate=1e-3", "train.max_minutes=2", "text.pretrained_encoder=null"]
    )
    assert config.train.learning_rate == pytest.approx(1e-3) and config.train.max_minutes == 2.0
    with pytest.raises(ConfigError, match="batch_size must be int"):
        load_config("cpu", overrides=["train.batch_size=big"])
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        load_config("cpu", overrides=["train.batch_size=0"])
    with pytest.raises(ConfigError, match="keep_checkpoints must be >= 0"):
        load_config("cpu", overrides=["train.keep_checkpoints=-1"])
    assert load_config("cpu", overrides=["train.keep_checkpoints=0"]).train.keep_checkpoints == 0
    with pytest.raises(ConfigError, match="did you mean train.batch_size"):
        load_config("cpu", overrides=["train.batchsize=3"])
    with pytest.raises(ConfigError, match="unknown preset 'cpuu'.*did you mean 'cpu'"):
        load_config("cpuu")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["batch_size=3"])


def test_bad_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config("cpu", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("cpu", bad)


def test_saved_config_round_trip(tmp_path):
    config = load_config("tiny", overrides=["train.seed=7"])
    config.save(tmp_path / "config.yaml")
    import yaml

    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == config


def test_yes_no_on_off_stay_strings(tmp_path):
    # YAML 1.1 would read `no` as False and reject train.mixed_precision=no ("must be str, got False")
    assert load_config("gpu", overrides=["train.mixed_precision=no"]).train.mixed_precision == "no"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("train:\n  mixed_precision: no\n")
    assert load_config("gpu", yaml_file).train.mixed_precision == "no"
    assert parse_overrides(["a.b=true", "a.c=False", "a.d=off"]) == {"a": {"b": True, "c": False, "d": "off"}}
