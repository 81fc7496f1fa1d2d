import pytest

from clinicalbert_spark.config import (ConfigError, PipelineConfig, build_parser,
                                       config_from_args, load_config)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_defaults_are_bio_clinicalbert_at_pretraining_length():
    cfg = PipelineConfig()
    assert cfg.encode.model == "emilyalsentzer/Bio_ClinicalBERT"
    assert cfg.encode.max_length == 128
    assert cfg.segment.include_text is True


def test_yaml_then_flags_then_set(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("encode:\n  pooling: mean\n  max_length: 256\nspark:\n  conf:\n    a.b: '1'\n")
    cfg = load_config(["--config", str(y), "--encode.max_length", "64",
                       "--set", "segment.include_text=false", "--set", "spark.conf={x: y}"])
    assert cfg.encode.pooling == "mean"
    assert cfg.encode.max_length == 64
    assert cfg.segment.include_text is False
    assert cfg.spark.conf == {"x": "y"}


def test_every_key_has_a_flag():
    p = build_parser()
    flags = {a for action in p._actions for a in action.option_strings}
    for key in ("--input.path", "--encode.pooling", "--output.format", "--run.full_refresh",
                "--no-segment.include_text", "--spark.master", "--predict.top_k"):
        assert key in flags


def test_aliases_and_bool_flags():
    cfg = load_config(["--model", "/m", "--full-refresh", "--stages", "segment,predict"],
                      aliases={"--model": "encode.model", "--full-refresh": "run.full_refresh",
                               "--stages": "run.stages"})
    assert cfg.encode.model == "/m"
    assert cfg.run.full_refresh is True
    assert cfg.run.stages == ["segment", "predict"]


@pytest.mark.parametrize("args", [
    ["--encode.pooling", "max"],
    ["--encode.max_length", "1024"],
    ["--set", "encode.nope=1"],
    ["--stages", "segment,fly"],
    ["--set", "no_equals_sign"],
])
def test_bad_values_are_clear_errors(args):
    with pytest.raises(ConfigError) as e:
        load_config(args, aliases={"--stages": "run.stages"})
    assert "invalid configuration" in str(e.value) or "KEY=VALUE" in str(e.value)


def test_shipped_configs_validate():
    for name in ("default.yaml", "demo.yaml"):
        ns = build_parser().parse_args(["--config", str(ROOT / "conf" / name)])
        config_from_args(ns)


def test_config_hash_ignores_paths():
    a = PipelineConfig.model_validate({"input": {"path": "/a"}})
    b = PipelineConfig.model_validate({"input": {"path": "/b"}})
    c = PipelineConfig.model_validate({"encode": {"pooling": "cls"}})
    assert a.config_hash() == b.config_hash() != c.config_hash()
