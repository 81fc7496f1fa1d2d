"""SentenceEncoder behaviour on a tiny checkpoint, checked against plain torch."""
import numpy as np
import pytest
import torch

from clinicalbert_spark.encode import (
    EncoderConfig,
    SentenceEncoder,
    clear_cache,
    get_cached,
    load_count,
    load_model,
    window_starts,
)
from clinicalbert_spark.testing import CLINICAL_WORDS, build_tiny_bert

SENTENCES = [
    "Patient denies chest pain.",
    "No fever, cough or shortness of breath.",
    "Started metformin 500 mg twice daily for type 2 diabetes mellitus.",
    "Abdomen soft, nontender.",
    "CT scan showed no evidence of pneumonia.",
    "BP 120/80.",
    "He was admitted to the ICU with sepsis and acute renal failure, and started on heparin.",
    "x",
    "The patient's congestive heart failure improved; lisinopril continued.",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(build_tiny_bert(tmp_path_factory.mktemp("enc") / "tiny", seed=3))


# Tests of batching, windowing and pooling compare against plain fp32 torch, so they pin
# precision="fp32": the CPU default ("auto") is a reduced-precision mode (int8, or bf16 with
# AMX), held to fp32 by the fidelity gate in test_encode_precision.py instead.


def _reference(loaded, text, pooling, max_length=None):
    """Pooled vector of one text, computed directly from ``model(**tok)`` with no padding."""
    tok = loaded.tokenizer(text, return_tensors="pt", truncation=max_length is not None, max_length=max_length)
    with torch.inference_mode():
        h = loaded.model(**tok).last_hidden_state[0]
    return (h[0] if pooling == "cls" else h.mean(0)).numpy()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_batched_matches_one_at_a_time(loaded, pooling):
    # Small budget -> several batches of mixed lengths; shuffled input order.
    enc = SentenceEncoder(loaded, EncoderConfig(precision="fp32", pooling=pooling, max_tokens=64), device="cpu")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(SENTENCES))
    texts = [SENTENCES[i] for i in order]
    res = enc.encode(texts)
    assert res.stats.batches > 2
    assert res.status == ["ok"] * len(texts)
    for row, text in enumerate(texts):
        np.testing.assert_allclose(res.embeddings[row], _reference(loaded, text, pooling), atol=1e-5, rtol=1e-4)
        n = len(loaded.tokenizer(text)["input_ids"])
        assert res.n_tokens[row] == n and res.n_windows[row] == 1 and not res.truncated[row]


def test_padding_is_multiple_of_eight_and_stats(loaded):
    seen = []
    enc = SentenceEncoder(loaded, EncoderConfig(precision="fp32", max_tokens=128, pad_to_multiple_of=8), device="cpu")
    inner = enc._forward

    def spy(input_ids, attention_mask):
        seen.append(tuple(input_ids.shape))
        return inner(input_ids, attention_mask)

    enc._forward = spy
    res = enc.encode(SENTENCES * 3)
    assert all(L % 8 == 0 and B * L <= 128 for B, L in seen)
    st = res.stats
    assert st.batches == len(seen) and st.padded_tokens == sum(B * L for B, L in seen)
    assert st.real_tokens == int(res.n_tokens.sum())
    assert 0 < st.padding_efficiency <= 1 and st.seconds > 0
    assert st.as_dict()["padding_efficiency"] == st.padding_efficiency
    assert (st + st).batches == 2 * st.batches


def test_cpu_pads_to_the_longest_row_only(loaded):
    # Default pad_to_multiple_of (None): 1 on CPU, no round-up to a multiple of 8.
    seen = []
    enc = SentenceEncoder(loaded, EncoderConfig(precision="fp32"), device="cpu")
    inner = enc._forward

    def spy(input_ids, attention_mask):
        seen.append((tuple(input_ids.shape), int(attention_mask.sum(1).max())))
        return inner(input_ids, attention_mask)

    enc._forward = spy
    enc.encode(SENTENCES)
    assert seen and all(L == longest for (_, L), longest in seen)
    assert any(L % 8 for (_, L), _ in seen)


def test_small_cpu_task_closes_batches_early_to_spare_padding(loaded):
    """A few hundred sentences of spread-out lengths (a nightly run's task): at the CPU budget a
    batch closes once it holds 1/16 of the budget and the next row is shorter, so padding
    stays low; the old quarter-of-the-budget rule padded such a task to ~0.8."""
    import random

    rng = random.Random(3)
    texts = [" ".join(rng.choice(CLINICAL_WORDS) for _ in range(max(2, int(rng.lognormvariate(2.6, 0.7)))))
             for _ in range(400)]
    res = SentenceEncoder(loaded, EncoderConfig(precision="fp32"), device="cpu").encode(texts)
    assert res.stats.padding_efficiency >= 0.88  # 0.90 here; 0.75 under the old rule
    # Batches still hold at least 1/16 of the 8,192-token budget, bar the tail.
    assert res.stats.batches <= res.stats.padded_tokens / 512 + 2


def test_result_independent_of_budget(loaded):
    a = SentenceEncoder(loaded, EncoderConfig(precision="fp32", max_tokens=32), device="cpu").encode(SENTENCES)
    b = SentenceEncoder(loaded, EncoderConfig(precision="fp32", max_tokens=100_000), device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)


def _long_text(n_words=80):
    words = [w for w in CLINICAL_WORDS if w.isalpha()]
    return " ".join(words[i % len(words)] for i in range(n_words))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_long_text_windows_are_averaged(loaded, pooling):
    text = _long_text()
    cfg = EncoderConfig(precision="fp32", pooling=pooling, max_length=16, stride=4)
    res = SentenceEncoder(loaded, cfg, device="cpu").encode([text, "chest pain"])
    content = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    starts = window_starts(len(content), 14, 4)
    assert len(starts) > 2
    assert res.n_windows.tolist() == [len(starts), 1]
    assert res.n_tokens[0] == sum(len(content[s : s + 14]) + 2 for s in starts)
    assert not res.truncated.any()
    ref = []
    for s in starts:
        ids = torch.tensor([[loaded.tokenizer.cls_token_id, *content[s : s + 14], loaded.tokenizer.sep_token_id]])
        with torch.inference_mode():
            h = loaded.model(input_ids=ids).last_hidden_state[0]
        ref.append((h[0] if pooling == "cls" else h.mean(0)).numpy())
    np.testing.assert_allclose(res.embeddings[0], np.mean(ref, axis=0), atol=1e-5, rtol=1e-4)


def test_truncate_policy_flags_rows(loaded):
    text = _long_text()
    cfg = EncoderConfig(precision="fp32", max_length=16, long_policy="truncate")
    res = SentenceEncoder(loaded, cfg, device="cpu").encode([text, "chest pain"])
    assert res.truncated.tolist() == [True, False]
    assert res.n_windows.tolist() == [1, 1] and res.n_tokens[0] == 16
    np.testing.assert_allclose(res.embeddings[0], _reference(loaded, text, "mean", max_length=16), atol=1e-5, rtol=1e-4)


def test_normalize_and_float16(loaded):
    cfg = EncoderConfig(precision="fp32", normalize=True, embedding_dtype="float16")
    res = SentenceEncoder(loaded, cfg, device="cpu").encode(
        SENTENCES + [""]
    )
    assert res.embeddings.dtype == np.float16
    norms = np.linalg.norm(res.embeddings.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms[:-1], 1.0, atol=2e-3)
    assert norms[-1] == 0.0
    plain = SentenceEncoder(loaded, EncoderConfig(precision="fp32"), device="cpu").encode(SENTENCES)
    expect = plain.embeddings / np.linalg.norm(plain.embeddings, axis=1, keepdims=True)
    np.testing.assert_allclose(res.embeddings[:-1].astype(np.float32), expect, atol=2e-3)


def test_bad_rows_do_not_break_the_partition(loaded):
    texts = ["chest pain", None, "", "   \n\t", float("nan"), 42, "\u200b", "no fever"]
    res = SentenceEncoder(loaded, EncoderConfig(precision="fp32"), device="cpu").encode(texts)
    assert res.status == ["ok", "empty_text", "empty_text", "empty_text", "empty_text", "invalid_type", "no_tokens", "ok"]
    assert res.ok.tolist() == [s == "ok" for s in res.status]
    bad = ~res.ok
    assert np.all(res.embeddings[bad] == 0) and np.isfinite(res.embeddings).all()
    assert np.all(res.n_tokens[bad] == 0) and np.all(res.n_windows[bad] == 0)
    np.testing.assert_allclose(res.embeddings[0], _reference(loaded, "chest pain", "mean"), atol=1e-5)
    empty = SentenceEncoder(loaded, EncoderConfig(precision="fp32"), device="cpu").encode([None, ""])
    assert empty.embeddings.shape == (2, loaded.config.hidden_size) and empty.stats.batches == 0
    assert SentenceEncoder(loaded, EncoderConfig(precision="fp32"), device="cpu").encode([]).embeddings.shape == (0, 32)


def test_oom_retry_halves_budget_and_keeps_results(loaded):
    base = SentenceEncoder(loaded, EncoderConfig(precision="fp32", max_tokens=1024), device="cpu").encode(SENTENCES)
    enc = SentenceEncoder(loaded, EncoderConfig(precision="fp32", max_tokens=1024), device="cpu")
    real_forward = enc._forward
    shapes = []

    def flaky(input_ids, attention_mask):
        shapes.append(tuple(input_ids.shape))
        if input_ids.shape[0] > 1:  # "GPU" fits one row at a time
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(input_ids, attention_mask)

    enc._forward = flaky
    res = enc.encode(SENTENCES)
    assert res.stats.oom_retries >= 2
    assert enc.max_tokens < 1024  # budget stays lowered for later calls
    # every failed attempt was retried smaller; every batch that ran fit the "GPU"
    assert sum(b > 1 for b, _ in shapes) == res.stats.oom_retries
    assert sum(b <= 1 for b, _ in shapes) == res.stats.batches
    np.testing.assert_allclose(res.embeddings, base.embeddings, atol=1e-5)
    assert res.status == base.status

    def always_oom(input_ids, attention_mask):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    enc._forward = always_oom
    with pytest.raises(torch.cuda.OutOfMemoryError):  # one row cannot be split further
        enc.encode(SENTENCES[:3])


def test_cublas_alloc_failure_counts_as_oom(loaded):
    enc = SentenceEncoder(loaded, EncoderConfig(precision="fp32", max_tokens=1024), device="cpu")
    real_forward = enc._forward
    calls = []

    def flaky(input_ids, attention_mask):
        calls.append(input_ids.shape[0])
        if len(calls) == 1:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)")
        return real_forward(input_ids, attention_mask)

    enc._forward = flaky
    assert enc.encode(SENTENCES).stats.oom_retries == 1

    def broken(input_ids, attention_mask):
        raise RuntimeError("shape mismatch")  # a real bug is not retried

    enc._forward = broken
    with pytest.raises(RuntimeError, match="shape mismatch"):
        enc.encode(SENTENCES)


def test_invalid_configs():
    with pytest.raises(ValueError):
        EncoderConfig(max_length=1024)
    with pytest.raises(ValueError):
        EncoderConfig(pooling="max")
    with pytest.raises(ValueError):
        EncoderConfig(max_length=16, stride=14)
    with pytest.raises(ValueError):
        EncoderConfig(long_policy="drop")
    assert EncoderConfig().effective_stride == 32
    assert hash(EncoderConfig()) == hash(EncoderConfig())  # usable in cache keys


def test_bf16_autocast_on_cpu_is_close(loaded):
    fp32 = SentenceEncoder(loaded, EncoderConfig(normalize=True, precision="fp32"), device="cpu").encode(SENTENCES)
    bf16 = SentenceEncoder(loaded, EncoderConfig(normalize=True, precision="bf16"), device="cpu").encode(SENTENCES)
    assert bf16.embeddings.dtype == np.float32
    cos = (fp32.embeddings * bf16.embeddings).sum(1)
    assert cos.min() > 0.99


def test_int8_on_cpu_is_close_and_leaves_the_model_fp32(loaded):
    fp32 = SentenceEncoder(loaded, EncoderConfig(normalize=True, precision="fp32"), device="cpu")
    int8 = SentenceEncoder(loaded, EncoderConfig(normalize=True, precision="int8"), device="cpu")
    assert int8.precision == "int8" and fp32.precision == "fp32"
    assert any(type(m).__name__ == "Int8Linear" for m in int8.model.modules())
    # The shared checkpoint is not quantised in place: fp32 users of it stay exact.
    assert not any(type(m).__name__ == "Int8Linear" for m in loaded.model.modules())
    a, b = fp32.encode(SENTENCES), int8.encode(SENTENCES)
    assert b.embeddings.dtype == np.float32 and b.status == a.status
    cos = (a.embeddings * b.embeddings).sum(1)
    assert cos.min() > 0.98
    np.testing.assert_allclose(fp32.encode(SENTENCES).embeddings, a.embeddings, atol=1e-6)


def test_auto_precision_is_resolved_once_and_exposed(loaded):
    from clinicalbert_spark.encode import resolve_encode_precision

    auto = resolve_encode_precision("auto", torch.device("cpu"))
    assert auto in ("fp32", "bf16", "int8")
    assert SentenceEncoder(loaded, EncoderConfig(), device="cpu").precision == auto
    assert resolve_encode_precision("fp32", "cpu") == "fp32"
    assert resolve_encode_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError):
        resolve_encode_precision("int8", "cuda")
    with pytest.raises(ValueError):
        EncoderConfig(precision="int4")


def test_encoder_cached_once_per_process(tmp_path):
    path = build_tiny_bert(tmp_path / "cached")
    clear_cache()
    cfg = EncoderConfig()
    key = ("encoder", str(path), None, cfg)
    made = [get_cached(key, lambda: SentenceEncoder(load_model(path), cfg, device="cpu")) for _ in range(3)]
    assert made[0] is made[1] is made[2]
    assert load_count(key) == 1
    assert made[2].encode(["chest pain"]).status == ["ok"]
    clear_cache()


HARD_TEXTS = SENTENCES + [
    "Café au lait spots; naïve T-cells, β-blocker 25 mg.",
    "Zero\u200bwidth and\u00a0no-break spaces\ttabs\r\nnewlines",
    "Text with [SEP] and [CLS] and [MASK] inside it.",
    "\x01\x02",  # control characters only: the tokenizer yields nothing
    "UPPER lower MiXeD 12.5mg q6h prn",
    " ".join(CLINICAL_WORDS) * 3,  # long: no truncation
    "\u4e2d\u6587 emoji \U0001F600 end.",
]


def test_tokenize_fast_path_matches_the_tokenizer_call(loaded):
    # tokenize_texts reads ids from the Rust tokenizer directly; they must be exactly what
    # the transformers call gives (no special tokens, no truncation), row for row.
    from clinicalbert_spark.encode.runtime import classify_texts, tokenize_texts
    from clinicalbert_spark.testing import minilm_path

    tokenizers = [loaded.tokenizer]
    if minilm_path() is not None:
        from transformers import AutoTokenizer

        tokenizers.append(AutoTokenizer.from_pretrained(str(minilm_path())))
    texts = HARD_TEXTS + [None, "   ", 7]
    for tok in tokenizers:
        assert tok.is_fast
        status = classify_texts(texts)
        fast = tokenize_texts(tok, texts, status)
        ref = tok(HARD_TEXTS, add_special_tokens=False, truncation=False)["input_ids"]
        for i, r in enumerate(ref):
            assert (fast[i] or []) == r, f"row {i}"
            assert status[i] == ("ok" if r else "no_tokens")
        assert fast[len(HARD_TEXTS):] == [None] * 3
        assert len(fast[HARD_TEXTS.index(" ".join(CLINICAL_WORDS) * 3)]) > 128
        # A tokenizer saved with truncation on (tokenizer.json) still tokenizes in full.
        tok.backend_tokenizer.enable_truncation(16)
        long_row = tokenize_texts(tok, HARD_TEXTS[-2:-1], ["ok"])[0]
        assert len(long_row) == len(ref[-2])


def test_encode_stream_matches_encode_chunk_by_chunk(loaded):
    enc = SentenceEncoder(loaded, EncoderConfig(), device="cpu")
    chunks = [SENTENCES[:4], [], HARD_TEXTS, [None, "Only one."]]
    frames = [{"id": i, "text": c} for i, c in enumerate(chunks)]
    out = list(enc.encode_stream(frames, texts=lambda f: f["text"]))
    assert [f["id"] for f, _ in out] == [0, 1, 2, 3]  # order and the chunks themselves kept
    for chunk, (_, res) in zip(chunks, out):
        ref = enc.encode(chunk)
        assert res.status == ref.status
        np.testing.assert_array_equal(res.n_tokens, ref.n_tokens)
        np.testing.assert_allclose(res.embeddings, ref.embeddings, rtol=0, atol=1e-6)
    assert list(enc.encode_stream([])) == []


def test_encode_stream_raises_the_preparation_error_in_order(loaded):
    enc = SentenceEncoder(loaded, EncoderConfig(), device="cpu")

    class Boom(Exception):
        pass

    def texts(chunk):
        if chunk == "bad":
            raise Boom()
        return chunk

    got = []
    with pytest.raises(Boom):
        for chunk, _ in enc.encode_stream([SENTENCES[:2], "bad", SENTENCES[2:4]], texts=texts):
            got.append(chunk)
    assert got == [SENTENCES[:2]]


def test_ready_4d_mask_gives_the_same_vectors(loaded):
    # On a GPU the encoder passes SDPA a ready 4-D mask (no host sync per batch); forced
    # here on CPU, the vectors must equal the 2-D mask path's.
    ref = SentenceEncoder(loaded, EncoderConfig(precision="fp32"), device="cpu")
    alt = SentenceEncoder(loaded, EncoderConfig(precision="fp32"), device="cpu")
    if getattr(loaded.model.config, "_attn_implementation", None) != "sdpa":
        pytest.skip("model not loaded with SDPA")
    assert alt._mask_4d_agrees()  # the check the encoder runs once on a GPU
    alt._mask_4d = True
    a, b = ref.encode(HARD_TEXTS), alt.encode(HARD_TEXTS)
    np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_bf16_runs_bf16_weights_within_the_gate(loaded):
    from clinicalbert_spark.encode.fidelity import row_cosines

    fp32 = SentenceEncoder(loaded, EncoderConfig(precision="fp32"), device="cuda")
    bf16 = SentenceEncoder(loaded, EncoderConfig(precision="bf16"), device="cuda")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert next(loaded.model.parameters()).dtype == torch.float32  # a copy; the loaded model kept
    assert bf16._mask_4d
    texts = SENTENCES + HARD_TEXTS
    a, b = fp32.encode(texts), bf16.encode(texts)
    assert a.status == b.status and b.embeddings.dtype == np.float32
    ok = a.ok
    assert row_cosines(a.embeddings[ok], b.embeddings[ok]).mean() >= 0.995


def test_sdpa_backends_leave_cudnn_out_on_gpu_only(monkeypatch):
    from contextlib import nullcontext

    from clinicalbert_spark.encode.device import sdpa_backends

    assert isinstance(sdpa_backends(torch.device("cpu")), nullcontext)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with sdpa_backends(torch.device("cuda", 0)):  # only sets torch's flags: no GPU needed
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    monkeypatch.setenv("CBS_SDPA_CUDNN", "1")
    assert isinstance(sdpa_backends(torch.device("cuda", 0)), nullcontext)
