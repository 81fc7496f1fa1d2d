"""Continued MLM pretraining (jobs/pretrain.py): TorchDistributor with 2 CPU processes lowers the
held-out loss; a run stopped and resumed from its checkpoint continues the same loss curve."""
from __future__ import annotations

import json

import pytest

import jobs_path  # noqa: F401 - puts jobs/ on sys.path
from conftest import read_csv_notes


@pytest.fixture(scope="module")
def instances_dir(tiny_bert, demo_csv, tmp_path_factory):
    from clinicalbert_spark.pretrain.documents import instances_frame
    from clinicalbert_spark.pretrain.instances import InstanceSettings
    from test_pretrain_data import _sentence_frame

    pdf = _sentence_frame(list(read_csv_notes(demo_csv).items()))
    out = instances_frame(pdf, tiny_bert, InstanceSettings(dup_factor=3))
    d = tmp_path_factory.mktemp("instances")
    out.iloc[: len(out) // 2].to_parquet(d / "part-0.parquet")  # two files, any order
    out.iloc[len(out) // 2:].to_parquet(d / "part-1.parquet")
    return d


def _base(instances_dir, tiny_bert, **kw):
    return dict(dict(instances=str(instances_dir), model=tiny_bert, max_steps=24, lr=2e-3,
                     warmup_steps=3, save_every=8, log_every=8, heldout_fraction=0.15,
                     threads=1), **kw)


def test_resumed_run_continues_the_same_loss_curve(instances_dir, tiny_bert, tmp_path):
    from clinicalbert_spark.pretrain.train import latest_checkpoint, train

    full = train(_base(instances_dir, tiny_bert, output=str(tmp_path / "a")))
    part = train(_base(instances_dir, tiny_bert, output=str(tmp_path / "b"), stop_at_step=16))
    assert part["steps"] == 16 and not part["finished"]
    ck = latest_checkpoint(str(tmp_path / "b"))
    assert ck.name == "checkpoint-16" and (ck / "model.safetensors").is_file()
    assert {"optimizer.pt", "scheduler.pt", "rng_rank0.pt", "trainer_state.json"} <= {
        p.name for p in ck.iterdir()}
    resumed = train(_base(instances_dir, tiny_bert, output=str(tmp_path / "b")))
    assert resumed["resumed_from"].endswith("checkpoint-16") and resumed["finished"]
    assert resumed["losses"] == full["losses"]  # steps 17..24 identical, not just close
    assert resumed["heldout_after"] == full["heldout_after"]
    assert resumed["heldout_before"] == full["heldout_before"]


def test_torchdistributor_two_cpu_processes_lower_heldout_loss(spark, instances_dir, tiny_bert,
                                                               tmp_path, capsys):
    import pretrain

    out = tmp_path / "run"
    rc = pretrain.main(["--instances", str(instances_dir), "--model", tiny_bert, "--output",
                        str(out), "--processes", "2", "--max-steps", "80", "--lr", "2e-3",
                        "--warmup-steps", "10", "--save-every", "40", "--log-every", "40",
                        "--heldout-fraction", "0.15", "--runs-root", str(tmp_path / "root"),
                        "--run-id", "pt-1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["processes"] == 2 and summary["micro_batch"] == 16
    assert summary["steps"] == 80 and summary["finished"]
    before, after = summary["heldout_before"], summary["heldout_after"]
    assert after["loss"] < before["loss"] - 0.5
    assert 0 <= after["accuracy"] <= 1 and after["masked_tokens"] == before["masked_tokens"] > 0
    losses = [v for _, v in summary["losses"]]
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20
    assert (out / "checkpoint-80" / "model.safetensors").is_file()
    assert "held-out loss" in captured.out
    # the runs table under --runs-root has the run's row, held-out figures included
    row = spark.read.parquet(str(tmp_path / "root" / "runs")).collect()
    assert len(row) == 1 and (row[0].run_id, row[0].stages, row[0].status) == (
        "pt-1", "pretrain", "succeeded")
    metrics = json.loads(row[0].fingerprints)["checkpoint"]["metrics"]
    assert metrics["heldout_before"] == before and metrics["heldout_after"] == after
    assert row[0].tokens == summary["tokens"] > 0 and row[0].sentences is None


def test_pretrain_errors_are_one_line(tiny_bert, tmp_path, capsys):
    import pretrain

    def errors():
        return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]

    rc = pretrain.main(["--instances", str(tmp_path / "none"), "--model", tiny_bert,
                        "--output", str(tmp_path / "o")])
    assert rc == 3 and len(errors()) == 1
    rc = pretrain.main(["--instances", str(tmp_path), "--model", tiny_bert, "--output",
                        str(tmp_path / "o"), "--batch-size", "30", "--processes", "4"])
    assert rc == 2 and len(errors()) == 1
