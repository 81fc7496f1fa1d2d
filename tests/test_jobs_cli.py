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


def test_pickle_only_checkpoint_needs_no_flag(tmp_path, capsys):
    from clinicalbert_spark.testing import build_tiny_bert

    # pytorch_model.bin only (like Bio_ClinicalBERT): the preflight reads it weights-only and
    # accepts it without --allow-pickle; this bare encoder then fails on its missing head,
    # which proves the weights passed (and no Spark session is started).
    m = build_tiny_bert(tmp_path / "m", save_format="pickle")
    rc = predict.main(["--input", str(tmp_path), "--output", str(tmp_path / "o"),
                       "--model", str(m)])
    assert rc == 5  # model error (clinicalbert_spark.errors)
    err = capsys.readouterr().err
    assert "has no prediction head" in err and "unpickling" not in err


class _WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling runs exec, which writes the marker
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def test_code_running_pickle_is_one_line_exit_5_and_never_runs(tmp_path, capsys):
    import torch

    from clinicalbert_spark.testing import build_tiny_bert

    m = build_tiny_bert(tmp_path / "m", save_format="pickle")
    marker = tmp_path / "marker-code-ran"
    sd = torch.load(m / "pytorch_model.bin", map_location="cpu", weights_only=True)
    torch.save({**sd, "evil": _WritesMarker(marker)}, m / "pytorch_model.bin")
    for flags in ([], ["--allow-pickle"]):  # the deprecated flag opens nothing
        rc = embed_sentences.main(["--input", str(tmp_path), "--output", str(tmp_path / "o"),
                                   "--model", str(m), *flags])
        assert rc == 5  # model error (clinicalbert_spark.errors)
        err = [line for line in capsys.readouterr().err.splitlines()
               if line.startswith("error:")]
        assert len(err) == 1 and "needs full unpickling" in err[0] and "exec" in err[0]
        assert not marker.exists()


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
