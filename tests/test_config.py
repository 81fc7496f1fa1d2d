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


# --------------------------------------------------------------------------------------------
# Command-line values are text where the field is text


RUN_ID = {"--run-id": "run.run_id"}


@pytest.mark.parametrize("value", ["2024-01-01", "007", "1e3", "true", "yes", "[a]", "a: b",
                                   "12:30", "0x10", "'quoted'"])
def test_text_fields_take_the_value_verbatim(value):
    for argv in (["--run-id", value], ["--run.run_id", value], ["--set", f"run.run_id={value}"]):
        cfg = load_config(argv, aliases=RUN_ID)
        assert cfg.run.run_id == value, argv


def test_text_fields_verbatim_for_plain_str_and_literal_fields():
    cfg = load_config(["--input.id_column", "007", "--set", "input.text_column=2024-01-01",
                       "--encode.model", "123", "--set", "encode.device=0",
                       "--input.format", "csv", "--set", "encode.pooling=cls",
                       "--set", "input.encoding=  latin-1"])
    assert cfg.input.id_column == "007"
    assert cfg.input.text_column == "2024-01-01"
    assert cfg.encode.model == "123"
    assert cfg.encode.device == "0"
    assert (cfg.input.format, cfg.encode.pooling) == ("csv", "cls")
    assert cfg.input.encoding == "  latin-1"  # verbatim: no YAML stripping


@pytest.mark.parametrize("word", ["null", "~", "NULL"])
def test_null_still_means_none_for_optional_text(word):
    cfg = load_config(["--input.subject_column", word, "--set", f"encode.revision={word}",
                       "--run-id", word], aliases=RUN_ID)
    assert cfg.input.subject_column is None
    assert cfg.encode.revision is None
    assert cfg.run.run_id is None


def test_null_is_text_for_a_required_text_field():
    # input.id_column cannot be None: "null" is a column name there, not a missing value.
    assert load_config(["--input.id_column", "null"]).input.id_column == "null"


def test_non_text_fields_keep_yaml_parsing():
    cfg = load_config(["--encode.max_length", "064", "--set", "run.lock_wait_s=1.5",
                       "--set", "segment.include_text=false", "--set", "spark.partitions=~",
                       "--set", "run.stages=[segment, embed]", "--spark.conf", "{a: b}"])
    assert cfg.encode.max_length == 64
    assert cfg.run.lock_wait_s == 1.5
    assert cfg.segment.include_text is False
    assert cfg.spark.partitions is None
    assert cfg.run.stages == ["segment", "embed"]
    assert cfg.spark.conf == {"a": "b"}


def test_set_a_spark_setting_whose_key_has_dots():
    cfg = load_config(["--set", "spark.conf={spark.a: x}", "--set", "spark.conf.spark.b.c=1",
                       "--set", "spark.conf.spark.d=007"])
    assert cfg.spark.conf == {"spark.a": "x", "spark.b.c": "1", "spark.d": "007"}


def test_non_text_values_still_validated():
    with pytest.raises(ConfigError, match="max_length"):
        load_config(["--encode.max_length", "abc"])
    with pytest.raises(ConfigError, match="pooling"):
        load_config(["--set", "encode.pooling=007"])
