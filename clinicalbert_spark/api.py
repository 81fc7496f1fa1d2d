"""The public API: segment, embed and predict on any Spark DataFrame, from a notebook or a job.

Plain keyword arguments, no configuration objects; every function returns a lazy DataFrame
(``segment_notes`` first runs one small job over the id column, to learn whether any id
repeats) and works the same on a classic SparkSession and over Spark Connect. The jobs in ``jobs/``
are thin users of these functions, so a notebook and a nightly run give the same rows.

Models are loaded once per Python worker (a per-process cache) and encoded in length-sorted,
token-budget batches; a hub id is resolved and checked once on the driver, and workers read
the local copy (they never call the hub).
"""
from __future__ import annotations

from typing import Optional, Sequence

from pyspark.sql import DataFrame

from .models import DEFAULT_MODEL

__all__ = ["segment_notes", "embed", "predict", "encoder_udf", "DEFAULT_MODEL"]


def _encode_config(**kw):
    from .config import EncodeConfig
    from .errors import ConfigError

    try:
        return EncodeConfig(**{k: v for k, v in kw.items() if v is not None})
    except Exception as e:  # pydantic: name the field, never a value
        fields = ", ".join(str(err["loc"][0]) for err in getattr(e, "errors", lambda: [])())
        raise ConfigError(f"invalid encoder argument(s): {fields or type(e).__name__}"
                          ) from None


def segment_notes(df: DataFrame, *, id_col: str = "note_id", text_col: str = "text",
                  subject_col: Optional[str] = "subject_id", hadm_col: Optional[str] = "hadm_id",
                  category_col: Optional[str] = "category", iserror_col: Optional[str] = "iserror",
                  backend: str = "rules", include_text: bool = True,
                  partitions: Optional[int] = None, return_rejects: bool = False):
    """Split each note of ``df`` into sections and sentences with exact character offsets.

    Parameters
    ----------
    df : DataFrame
        One row per note; any columns. Only ``id_col`` and ``text_col`` are required.
    id_col, text_col : str
        The note id and text columns (found ignoring case when the exact name is absent).
    subject_col, hadm_col, category_col, iserror_col : str or None
        Optional columns copied into the output (``subject_id``, ``hadm_id``, ``category``)
        or, for ``iserror_col``, marking notes entered in error. Used when present.
    backend : {"rules", "scispacy", ...}, default "rules"
        The segmenter (see ``docs/segmentation.md``).
    include_text : bool, default True
        Write each sentence's text. Sentence text is PHI: with False, offsets still join
        every row back to its note.
    partitions : int, optional
        Repartition the notes first.
    return_rejects : bool, default False
        Also return the notes that were not segmented, with a reason.

    Returns
    -------
    DataFrame, or (DataFrame, DataFrame) when ``return_rejects``
        Sentences (``note_id, subject_id, hadm_id, category, section_index, section_title,
        section_category, sentence_index, start, end, text, segmenter, segmenter_version,
        note_hash``; ``text[start:end]`` of the note is the sentence) and rejects
        (``note_id, reason, source_row, detail``: missing id, empty text, duplicate id,
        ISERROR, invalid UTF-8, segmentation error).

    Examples
    --------
    >>> from clinicalbert_spark import segment_notes
    >>> notes = spark.createDataFrame(
    ...     [("n1", "HPI: Chest pain since 2 days. No fever.\\nPlan: ECG."), ("n2", "")],
    ...     ["doc_id", "body"])
    >>> sentences, rejects = segment_notes(notes, id_col="doc_id", text_col="body",
    ...                                    return_rejects=True)
    >>> sentences.select("note_id", "section_category", "start", "end", "text").show(
    ...     truncate=False)  # doctest: +NORMALIZE_WHITESPACE
    +-------+--------------------------+-----+---+-----------------------------+
    |note_id|section_category          |start|end|text                         |
    +-------+--------------------------+-----+---+-----------------------------+
    |n1     |history_of_present_illness|0    |29 |HPI: Chest pain since 2 days.|
    |n1     |history_of_present_illness|30   |39 |No fever.                    |
    |n1     |plan                      |40   |50 |Plan: ECG.                   |
    +-------+--------------------------+-----+---+-----------------------------+
    <BLANKLINE>
    >>> rejects.select("note_id", "reason").show()
    +-------+----------+
    |note_id|    reason|
    +-------+----------+
    |     n2|empty_text|
    +-------+----------+
    <BLANKLINE>
    """
    from .config import InputConfig
    from .io import notes_from_frame
    from .spark.segment import segment_notes as _segment, split_segment_output
    from .spark.text import find_column

    def opt(name):
        return find_column(df, name) if name else None

    cfg = InputConfig(id_column=id_col, text_column=text_col, subject_column=opt(subject_col),
                      hadm_column=opt(hadm_col), category_column=opt(category_col),
                      iserror_column=opt(iserror_col))
    notes = notes_from_frame(df, cfg)
    out = _segment(notes.records, backend, include_text, partitions)
    sentences, rejects = split_segment_output(out)
    return (sentences, rejects) if return_rejects else sentences


def embed(df: DataFrame, *, text_col: str = "text",
          key_cols: Sequence[str] = ("note_id", "sentence_index"),
          keep_cols: Sequence[str] = (), model: str = DEFAULT_MODEL,
          revision: Optional[str] = None, pooling: str = "mean", normalize: bool = False,
          max_length: int = 128, stride: Optional[int] = None, long_policy: str = "window",
          max_tokens: Optional[int] = None, precision: str = "auto",
          embedding_dtype: str = "float32", device: str = "auto", compile: bool = False,
          allow_pickle: bool = False, partitions: Optional[int] = None,
          vector_storage: str = "float32") -> DataFrame:
    """Sentence embeddings of ``df[text_col]``, one row per input row.

    Parameters
    ----------
    df : DataFrame
        Any table with a text column (e.g. the output of :func:`segment_notes`).
    text_col : str, default "text"
    key_cols, keep_cols : sequence of str
        Columns copied to the output (keys first); the text is not copied unless named.
    model : str, default ``emilyalsentzer/Bio_ClinicalBERT``
        Hub id, local folder or ``pkg:<package>/<dir>``. Safetensors, or a pickle checkpoint
        read with torch's weights-only loader; ``trust_remote_code`` is never used.
    pooling : {"mean", "cls"}, default "mean"
    normalize : bool, default False
        L2-normalise the vectors (cosine = dot product).
    max_length : int, default 128
        Tokens per window; a longer sentence is split into overlapping windows whose vectors
        are averaged (``long_policy="window"``) or truncated (``"truncate"``).
    max_tokens : int, optional
        Token budget per batch (default by device).
    precision : {"auto", "fp32", "bf16", "fp16", "int8"}, default "auto"
        ``auto``: bf16 on a GPU; on a CPU bf16 where it has AMX, else int8 (docs/encoding.md).
    device : str, default "auto"
        The GPU Spark assigned to the task, else CUDA, else CPU.
    allow_pickle : bool, default False
        Deprecated, no effect (pickle weights are always read weights-only).
    partitions : int, optional
        Tasks to spread the rows over (default: the session's parallelism).
    vector_storage : {"float32", "float16", "int8"}, default "float32"
        How the vector is stored: ``float32`` in ``embedding``; ``float16`` (half the
        bytes) big-endian in the binary ``embedding_f16``; ``int8`` (a quarter) as
        ``embedding_i8`` times ``embedding_scale``. The SQL decoders are in docs/sql.md,
        the Python one is ``clinicalbert_spark.vectors.decode_vectors``.

    Returns
    -------
    DataFrame
        ``key_cols + keep_cols`` plus ``model, model_revision, pooling, dim, n_tokens,
        n_windows, truncated, embedding (array<float>), status``; with ``vector_storage``
        other than float32 also the columns that format uses (``embedding`` is then null).
        A row with no usable text has a null vector and a ``status`` saying why.

    Examples
    --------
    >>> from clinicalbert_spark import embed
    >>> sentences = spark.createDataFrame(
    ...     [("d1", 0, "Chest pain since 2 days."), ("d1", 1, "No fever."), ("d2", 0, " ")],
    ...     ["doc_id", "sent_no", "sentence"])
    >>> vectors = embed(sentences, text_col="sentence", key_cols=["doc_id", "sent_no"],
    ...                 model=MODEL)
    >>> vectors.select("doc_id", "sent_no", "dim", "n_tokens", "status").orderBy(
    ...     "doc_id", "sent_no").show()
    +------+-------+---+--------+----------+
    |doc_id|sent_no|dim|n_tokens|    status|
    +------+-------+---+--------+----------+
    |    d1|      0|384|       8|        ok|
    |    d1|      1|384|       5|        ok|
    |    d2|      0|384|       0|empty_text|
    +------+-------+---+--------+----------+
    <BLANKLINE>
    """
    from .spark.encode import embed_frame

    cfg = _encode_config(model=model, revision=revision, pooling=pooling, normalize=normalize,
                         max_length=max_length, stride=stride, long_policy=long_policy,
                         max_tokens=max_tokens, precision=precision,
                         embedding_dtype=embedding_dtype, device=device, compile=compile,
                         allow_pickle=allow_pickle, vector_storage=vector_storage)
    keep = list(dict.fromkeys([*key_cols, *keep_cols]))
    storage = None if cfg.vector_storage == "float32" else cfg.vector_storage
    return embed_frame(df, cfg, text_col, keep, partitions, storage=storage)


def predict(df: DataFrame, *, text_col: str = "text",
            key_cols: Sequence[str] = ("note_id", "sentence_index"),
            keep_cols: Sequence[str] = (), model: str = DEFAULT_MODEL,
            revision: Optional[str] = None, task: str = "auto", top_k: int = 5,
            offset_col: Optional[str] = None, max_length: int = 128,
            precision: str = "auto", device: str = "auto", allow_pickle: bool = False,
            partitions: Optional[int] = None) -> DataFrame:
    """Predictions of the checkpoint's head for ``df[text_col]``, one row per input row.

    The head is the one the checkpoint carries (``task="auto"``): fill-mask for
    Bio_ClinicalBERT itself (top-k tokens for each ``[MASK]``), sequence classification
    (label, score, probabilities) or token classification (entity spans) for a fine-tuned
    one.

    Parameters
    ----------
    df : DataFrame
    text_col : str, default "text"
    key_cols, keep_cols : sequence of str
        Columns copied to the output.
    model, revision : str
        As in :func:`embed`.
    task : {"auto", "fill-mask", "sequence-classification", "token-classification"}
    top_k : int, default 5
        Candidates kept per ``[MASK]``.
    offset_col : str, optional
        The text's offset in its note (``start`` of a sentences table): spans are then
        offsets into the note, else into the text.

    Returns
    -------
    DataFrame
        ``key_cols + keep_cols`` plus ``model, model_revision, task, label, score,
        probabilities, spans, status``.

    Examples
    --------
    >>> from clinicalbert_spark import predict
    >>> masked = spark.createDataFrame([("d1", 0, "The patient has [MASK] pain.")],
    ...                                ["doc_id", "sent_no", "sentence"])
    >>> out = predict(masked, text_col="sentence", key_cols=["doc_id", "sent_no"],
    ...               model=FILL_MASK_MODEL, top_k=3)
    >>> row = out.first()
    >>> row.task, row.status, len(row.spans[0].candidates), row.spans[0].start
    ('fill-mask', 'ok', 3, 16)
    """
    from .config import PredictConfig
    from .spark.encode import predict_frame

    ecfg = _encode_config(model=model, revision=revision, max_length=max_length,
                          precision=precision, device=device, allow_pickle=allow_pickle)
    pcfg = PredictConfig(model=model, revision=revision, task=task, top_k=top_k)
    keep = list(dict.fromkeys([*key_cols, *keep_cols]))
    return predict_frame(df, model, revision, pcfg, ecfg, text_col, keep, offset_col,
                         partitions)


def encoder_udf(model: str = DEFAULT_MODEL, *, revision: Optional[str] = None,
                pooling: str = "mean", normalize: bool = False, max_length: int = 128,
                stride: Optional[int] = None, long_policy: str = "window",
                max_tokens: Optional[int] = None, precision: str = "auto",
                device: str = "auto", allow_pickle: bool = False):
    """A pandas UDF ``text -> array<float>`` for ``df.select(...)`` / ``withColumn``.

    Like ``pyspark.ml.functions.predict_batch_udf``, it returns a function of a column; the
    model is loaded once per Python worker, rows are encoded in length-sorted token-budget
    batches across Arrow batches, and a row with no usable text gives null.

    Examples
    --------
    >>> from clinicalbert_spark import encoder_udf
    >>> to_vector = encoder_udf(MODEL, normalize=True)
    >>> df = spark.createDataFrame([("No fever.",), ("Chest pain.",), (None,)], ["sentence"])
    >>> rows = df.select(to_vector("sentence").alias("v")).collect()
    >>> [None if r.v is None else len(r.v) for r in rows]
    [384, 384, None]
    >>> round(sum(x * x for x in rows[0].v), 4)
    1.0
    """
    from .spark.encode import encoder_series_udf

    cfg = _encode_config(model=model, revision=revision, pooling=pooling, normalize=normalize,
                         max_length=max_length, stride=stride, long_policy=long_policy,
                         max_tokens=max_tokens, precision=precision, device=device,
                         allow_pickle=allow_pickle)
    return encoder_series_udf(cfg)  # resolves and checks the model on the driver

