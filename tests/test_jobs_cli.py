"""The jobs' command lines: bad flags and unusable models fail fast with one clear line."""
from __future__ import annotations


import jobs_path  # noqa: F401
import embed_sentences
import predict
import run_pipeline



def test_missing_model_folder(tmp_path, capsys):
    rc = embed_sentences.main(["--input", str(tmp_path), "--output", str(tmp_path / "o"),
                               "--model", str(tmp_path / "nope")])
    assert rc == 5  # model error (clinicalbert_spark.errors)
    assert "is not a directory" in capsys.readouterr().err


def test_model_folder_without_weights(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    rc = run_pipeline.main(["--input", str(tmp_path), "--output-root", str(tmp_path / "o"),
                            "--model", str(tmp_path / "m")])
    assert rc == 5  # model error (clinicalbert_spark.errors)
    assert "has no weights" in capsys.readouterr().err


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path, capsys):
    from clinicalbert_spark.testing import build_tiny_bert

    m = build_tiny_bert(tmp_path / "m", save_format="pickle")
    rc = predict.main(["--input", str(tmp_path), "--output", str(tmp_path / "o"),
                       "--model", str(m)])
    assert rc == 5  # model error (clinicalbert_spark.errors)
    assert "pickle" in capsys.readouterr().err


def test_hub_id_offline_says_how_to_download(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rc = embed_sentences.main(["--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert rc == 5  # model error (clinicalbert_spark.errors)
    err = capsys.readouterr().err
    assert "emilyalsentzer/Bio_ClinicalBERT" in err and "--model /models/" in err


def test_unknown_flag_value(capsys):
    assert run_pipeline.main(["--stages", "segment,nope"]) == 2
    assert "unknown stage" in capsys.readouterr().err


def test_predict_with_a_headless_model_is_one_clear_error(tmp_path, capsys):
    from clinicalbert_spark.testing import build_tiny_bert

    m = build_tiny_bert(tmp_path / "m")  # a bare encoder: no fill-mask or classifier head
    rc = predict.main(["--input", str(tmp_path), "--output", str(tmp_path / "o"),
                       "--model", str(m)])
    assert rc == 5  # model error (clinicalbert_spark.errors)
    assert "has no prediction head" in capsys.readouterr().err
