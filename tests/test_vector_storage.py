"""encode.vector_storage: float32 / float16 (big-endian binary) / int8 (+ per-vector scale).

Round trips in numpy, the docs/sql.md decoders in real DuckDB and real Spark SQL against
numpy, the query helper on every format, and the pipeline (tiny model) switching formats on
one output root: every switch re-embeds, never mixes, and a table written before schema 2.2
keeps working."""
from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from clinicalbert_spark import query as Q
from clinicalbert_spark import schemas
from clinicalbert_spark import vectors as V
from clinicalbert_spark.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# numpy: encode / decode


def _sample(n=40, dim=24, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32) * rng.uniform(1e-3, 30, size=(n, 1))
    x = x.astype(np.float32)
    x[0] = 0  # zero vector
    x[1, :4] = [65504.0, -65504.0, 1e-7, -6e-5]  # float16 max, subnormals
    x[2, :3] = [3e38, -1e-30, 0.0]  # int8: extreme but finite
    return x


def _decode_all(cols: dict) -> list:
    return V.decode_vectors({c: cols[c] for c in V.VECTOR_COLUMNS})


def test_schema_columns_and_version():
    names = [f.name for f in schemas.VECTOR_FIELDS]
    assert tuple(names) == V.VECTOR_COLUMNS
    for table in (schemas.EMBEDDINGS, schemas.NOTE_EMBEDDINGS):
        assert all(n in table.fieldNames() and table[n].nullable for n in names)
    assert schemas.SCHEMA_VERSION == "2.2"
    assert "schema version 2.2" in (REPO / "docs" / "tables.md").read_text()


def test_float16_round_trip_is_numpy_half_big_endian():
    x = _sample()
    x[2] = 1.0  # float16 cannot hold 3e38: see the overflow test
    cols = V.encode_vectors(x, "float16")
    assert cols["vector_format"] == ["float16"] * len(x)
    assert all(v is None for c in ("embedding", "embedding_i8", "embedding_scale")
               for v in cols[c])
    assert all(len(b) == 2 * x.shape[1] for b in cols["embedding_f16"])
    got = np.stack(_decode_all(cols))
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))
    assert not got[0].any()  # zero stays zero
    one = V.encode_vectors(np.ones((1, 2), np.float32), "float16")["embedding_f16"][0]
    assert one == b"\x3c\x00\x3c\x00"  # 1.0 is 0x3C00: high byte first


def test_int8_round_trip_error_is_half_a_step():
    x = _sample()
    cols = V.encode_vectors(x, "int8")
    q = np.stack(cols["embedding_i8"])
    scale = np.asarray(cols["embedding_scale"], np.float32)
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    assert cols["embedding_scale"][0] == 0.0 and not q[0].any()  # zero vector: scale 0
    np.testing.assert_allclose(scale, np.abs(x).max(axis=1) / 127, rtol=1e-6)
    got = np.stack(_decode_all(cols))
    np.testing.assert_array_equal(got, q.astype(np.float32) * scale[:, None])
    assert np.isfinite(got).all()
    assert (np.abs(got - x) <= scale[:, None] * 0.5001 + 1e-30).all()
    # the largest component of each vector is exact up to float rounding
    big = np.abs(x).argmax(axis=1)
    np.testing.assert_allclose(got[np.arange(len(x)), big], x[np.arange(len(x)), big],
                               rtol=1e-6)


def test_float32_keeps_the_values_and_rows_without_vector_are_null():
    x = _sample()
    x[2] = 1.0  # float16-safe
    present = np.ones(len(x), bool)
    present[[3, 7]] = False
    for fmt in V.FORMATS:
        cols = V.encode_vectors(x, fmt, present)
        assert cols["vector_format"] == [fmt] * len(x)
        dec = _decode_all(cols)
        assert dec[3] is None and dec[7] is None
        assert all(cols[c][3] is None for c in V.VECTOR_COLUMNS if c != "vector_format")
    np.testing.assert_array_equal(_decode_all(V.encode_vectors(x, "float32"))[5], x[5])


def test_overflow_and_nan_are_errors_that_quote_no_value():
    x = np.full((3, 4), 0.5, np.float32)
    x[1, 2] = 70000.123
    with pytest.raises(V.VectorRangeError, match="1 vector.*float16's range") as e:
        V.encode_vectors(x, "float16")
    assert "70000" not in str(e.value)
    # int8 and float32 store it (per-vector scale)
    assert V.encode_vectors(x, "int8")["embedding_scale"][1] == pytest.approx(70000.123 / 127)
    x[1, 2] = np.nan
    for fmt in V.FORMATS:
        with pytest.raises(V.VectorRangeError, match="NaN or infinite"):
            V.encode_vectors(x, fmt)
    # a NaN in a row without a vector does not matter
    assert V.encode_vectors(x, "float16", [True, False, True])["embedding_f16"][1] is None
    with pytest.raises(ValueError, match="unknown vector storage"):
        V.encode_vectors(x, "bfloat16")


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12),
                  elements=st.floats(-6e4, 6e4, width=32)))
def test_round_trip_properties(x):
    half = np.stack(_decode_all(V.encode_vectors(x, "float16"))) if len(x) else x
    np.testing.assert_array_equal(half, x.astype(np.float16).astype(np.float32))
    cols = V.encode_vectors(x, "int8")
    got = np.stack(_decode_all(cols)) if len(x) else x
    scale = np.asarray(cols["embedding_scale"], np.float32).reshape(-1, 1)
    assert np.isfinite(got).all()
    assert (np.abs(got - x) <= scale * 0.5001 + 1e-37).all()


def test_decode_vectors_reads_a_pandas_frame_with_nan_scale():
    x = _sample(4, 6)
    cols = V.encode_vectors(x, "int8", [True, False, True, True])
    pdf = pd.DataFrame({**cols, "embedding_scale": pd.array(cols["embedding_scale"],
                                                            dtype="Float32").astype(float)})
    dec = V.decode_vectors(pdf)
    assert dec[1] is None and np.allclose(dec[0], x[0], atol=float(np.abs(x[0]).max()) / 200)
    assert V.stored_format([None, float("nan"), "int8"]) == "int8"
    assert V.stored_format([None]) == "float32"


# --------------------------------------------------------------------------------------------
# Tables written with pyarrow in the stored schema; the docs/sql.md decoders


EMB_ARROW = pa.schema([
    ("note_id", pa.string()), ("sentence_index", pa.int32()), ("start", pa.int32()),
    ("end", pa.int32()), ("section_category", pa.string()), ("model", pa.string()),
    ("model_revision", pa.string()), ("pooling", pa.string()), ("dim", pa.int32()),
    ("n_tokens", pa.int32()), ("n_windows", pa.int32()), ("truncated", pa.bool_()),
    ("embedding", pa.list_(pa.float32())), ("vector_format", pa.string()),
    ("embedding_f16", pa.binary()), ("embedding_i8", pa.list_(pa.int8())),
    ("embedding_scale", pa.float32()), ("note_hash", pa.string()), ("fingerprint", pa.string()),
    ("run_id", pa.string()),
])


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors in 20 clusters (neighbours are meaningful, as with sentence embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.6 * rng.normal(size=(n, dim)) + 0.3
    return x.astype(np.float32)


def _write_embeddings(path: Path, x: np.ndarray, fmts, present=None) -> list[dict]:
    """One row per vector; ``fmts`` is one format for all rows or one per row."""
    n = len(x)
    fmts = [fmts] * n if isinstance(fmts, str) else list(fmts)
    present = np.ones(n, bool) if present is None else present
    rows = []
    for i in range(n):
        cols = V.encode_vectors(x[i:i + 1], fmts[i], present[i:i + 1])
        rows.append(dict(note_id=f"n{i // 5}", sentence_index=i % 5, start=0, end=1,
                         section_category="impression" if i % 2 else "findings",
                         model="m", model_revision="1", pooling="mean", dim=x.shape[1],
                         n_tokens=3, n_windows=1, truncated=False,
                         **{c: v[0] for c, v in cols.items()}, note_hash=f"h{i // 5}",
                         fingerprint="f", run_id="r1"))
    path.mkdir(parents=True)
    t = pa.Table.from_pylist(rows, EMB_ARROW)
    half = len(rows) // 2  # two files, as Spark leaves them
    pq.write_table(t.slice(0, half), path / "part-00000.zstd.parquet", compression="zstd")
    pq.write_table(t.slice(half), path / "part-00001.zstd.parquet", compression="zstd")
    return rows


@pytest.fixture(scope="module")
def mixed_table(tmp_path_factory):
    """Rows of every format (and rows without a vector) in one table."""
    x = _sample(30, 16, seed=3)
    x[2] = 1.0  # float16-safe
    fmts = [V.FORMATS[i % 3] for i in range(len(x))]
    present = np.ones(len(x), bool)
    present[[4, 9]] = False
    path = tmp_path_factory.mktemp("mixed") / "embeddings"
    rows = _write_embeddings(path, x, fmts, present)
    want = V.decode_vectors(pd.DataFrame(rows))
    return path, rows, want


def _doc_block(engine: str) -> str:
    text = (REPO / "docs" / "sql.md").read_text()
    m = re.search(rf"<!-- vector-decoder:{engine} -->\s*```sql\n(.*?)```", text, re.S)
    assert m, f"docs/sql.md has no {engine} decoder block"
    return m.group(1)


def _assert_same_vectors(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            np.testing.assert_array_equal(np.asarray(g, np.float32), w)


@pytest.mark.parametrize("variant", ["slice", "hex"])
def test_duckdb_docs_decoder_equals_numpy(mixed_table, variant):
    import duckdb

    path, rows, want = mixed_table
    block = _doc_block("duckdb")
    if variant == "hex":  # the docs' variant for DuckDB releases that cannot slice a BLOB
        slice_, hex_ = "b[2 * i + 1:2 * i + 2]::BIT::INTEGER", \
            "('0x' || substr(hex(b::BLOB), 4 * i + 1, 4))::INTEGER"
        assert f"`{hex_}`" in (REPO / "docs" / "sql.md").read_text() and slice_ in block
        block = block.replace(slice_, hex_)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW embeddings AS SELECT * FROM read_parquet('{path}/*.parquet')")
    for stmt in block.split(";"):
        if stmt.strip():
            con.execute(stmt)
    got = con.execute("SELECT note_id, sentence_index, embedding FROM embedding_vectors "
                      "ORDER BY note_id, sentence_index").fetchall()
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["note_id"], rows[i]["sentence_index"]))
    _assert_same_vectors([g[2] for g in got], [want[i] for i in order])
    # the docs' nearest query runs on the view (rows without a vector included)
    q = np.asarray(want[0], np.float32)
    scores = con.execute("SELECT list_cosine_similarity(embedding, $q::FLOAT[]) FROM "
                         "embedding_vectors WHERE embedding IS NOT NULL", {"q": q.tolist()})
    assert len(scores.fetchall()) == sum(w is not None for w in want)


def test_query_helper_decoder_equals_numpy(mixed_table):
    path, rows, want = mixed_table
    con = Q.connect(path.parent)  # the helper's view: embedding decoded by numpy (cbs_f16)
    got = con.execute("SELECT note_id, sentence_index, embedding FROM embeddings "
                      "ORDER BY note_id, sentence_index").fetchall()
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["note_id"], rows[i]["sentence_index"]))
    _assert_same_vectors([g[2] for g in got], [want[i] for i in order])
    # cbs_f16 itself, on every row (nulls included: the Arrow batch carries them)
    f16 = con.execute("SELECT cbs_f16(embedding_f16) FROM embeddings "
                      "ORDER BY note_id, sentence_index").fetchall()
    _assert_same_vectors([g[0] for g in f16],
                         [V.decode_vector(embedding_f16=rows[i]["embedding_f16"]) for i in order])
    spaces = Q.embedding_spaces(con)
    assert len(spaces) == 1 and spaces[0].formats == ("float16", "float32", "int8")


def test_spark_sql_docs_decoder_equals_numpy(spark, mixed_table):
    path, rows, want = mixed_table
    spark.read.parquet(str(path)).createOrReplaceTempView("cbs_vs_embeddings")
    sql = (_doc_block("spark").replace("CREATE OR REPLACE VIEW clinical.embedding_vectors",
                                       "CREATE OR REPLACE TEMPORARY VIEW cbs_vs_vectors")
           .replace("clinical.embeddings", "cbs_vs_embeddings").rstrip().rstrip(";"))
    spark.sql(sql)
    got = spark.sql("SELECT note_id, sentence_index, embedding FROM cbs_vs_vectors "
                    "ORDER BY note_id, sentence_index").collect()
    assert spark.table("cbs_vs_vectors").schema["embedding"].dataType.simpleString() \
        == "array<float>"
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["note_id"], rows[i]["sentence_index"]))
    _assert_same_vectors([r.embedding for r in got], [want[i] for i in order])
    spark.catalog.dropTempView("cbs_vs_vectors")
    spark.catalog.dropTempView("cbs_vs_embeddings")


def test_trino_docs_decoder_has_the_same_bit_layout():
    """No Trino here: check the recipe names the same masks and shifts as the others."""
    sql = _doc_block("trino")
    for token in ("31744", "1023", "bitwise_right_shift(u, 15)", "- 25", "from_big_endian_32",
                  "X'0000'", "x * embedding_scale"):
        assert token in sql


# --------------------------------------------------------------------------------------------
# nearest(): compact tables agree with float32


@pytest.mark.parametrize("fmt,min_overlap,atol", [("float16", 0.95, 2e-3), ("int8", 0.8, 2e-2)])
def test_nearest_on_compact_tables_agrees_with_float32(tmp_path, fmt, min_overlap, atol):
    x = _clustered(600, 48)
    present = np.ones(len(x), bool)
    present[11] = False  # a row without a vector (DuckDB's null-list case)
    _write_embeddings(tmp_path / "f32" / "embeddings", x, "float32", present)
    _write_embeddings(tmp_path / fmt / "embeddings", x, fmt, present)
    rng = np.random.default_rng(5)
    overlaps = []
    for qi in rng.choice(len(x), 15, replace=False):
        q = x[qi] + 0.1 * rng.normal(size=x.shape[1])
        a = Q.nearest(tmp_path / "f32", query_vector=q, k=10)
        b = Q.nearest(tmp_path / fmt, query_vector=q, k=10)
        ka, kb = list(zip(a.note_id, a.sentence_index)), list(zip(b.note_id, b.sentence_index))
        overlaps.append(len(set(ka) & set(kb)) / 10)
        assert ka[0] == kb[0]
        np.testing.assert_allclose(b.score.to_numpy(), a.score.to_numpy(), atol=atol)
    assert np.mean(overlaps) >= min_overlap


# --------------------------------------------------------------------------------------------
# Config, fingerprint


def test_config_flag_and_one_line_error(capsys):
    from clinicalbert_spark import cli
    from clinicalbert_spark.config import load_config

    assert load_config(["--encode.vector_storage", "int8"]).encode.vector_storage == "int8"
    assert load_config(["--set", "encode.vector_storage=float16"]).encode.vector_storage \
        == "float16"
    assert PipelineConfig().encode.vector_storage == "float32"
    code = cli.run_job(lambda cfg: 0, ["--encode.vector_storage", "float8"], {}, "test")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: invalid configuration: encode.vector_storage:")
    assert "'float16'" in err[0] and "'int8'" in err[0]


def test_storage_is_in_the_embeddings_fingerprint():
    from clinicalbert_spark.pipeline import embed_settings
    from clinicalbert_spark.state import fingerprint

    def fp(storage):
        cfg = PipelineConfig.model_validate({"encode": {"model": "pkg:x/y", "precision": "fp32",
                                                        "vector_storage": storage}})
        return embed_settings(cfg), fingerprint("embeddings", embed_settings(cfg))

    (s32, f32), (s16, f16), (s8, f8) = fp("float32"), fp("float16"), fp("int8")
    assert len({f32, f16, f8}) == 3
    # float32 (the default) is fingerprinted as before schema 2.2: no re-embedding on upgrade
    assert "vector_storage" not in s32 and s16["vector_storage"] == "float16"


# --------------------------------------------------------------------------------------------
# The pipeline, through the real jobs: switching formats on one root

NOTES = [
    ("101", "History:\nPatient denies chest pain. No fever or cough.\nPlan:\nAspirin daily."),
    ("102", "Exam:\nMild abdominal tenderness. Heart rate normal.\nPlan:\nContinue insulin."),
    # a sentence of zero-width characters only: no token, so no vector
    ("103", "Impression:\nSmall left pleural effusion. No acute process.\n\n\u200b\u200b\n\n"
            "Plan:\nRest."),
]


def _notes_csv(path: Path, notes=NOTES) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ROW_ID", "SUBJECT_ID", "HADM_ID", "CATEGORY", "ISERROR", "TEXT"])
        for nid, text in notes:
            w.writerow([nid, "7", "", "Discharge summary", "", text])
    return path


def _cfg(notes, root, model, run_id, storage, fmt="parquet",
         stages=("segment", "embed", "aggregate")):
    return PipelineConfig.model_validate({
        "input": {"path": str(notes)},
        "encode": {"model": model, "pooling": "mean", "max_tokens": 512, "precision": "fp32",
                   "vector_storage": storage},
        "output": {"root": str(root), "format": fmt},
        "run": {"run_id": run_id, "stages": list(stages)},
    })


def _read(root: Path, name: str, fmt: str) -> pd.DataFrame:
    if fmt == "delta":
        from deltalake import DeltaTable

        return DeltaTable(str(root / name)).to_pandas()
    return pd.read_parquet(root / name)


def _vectors(df: pd.DataFrame) -> dict:
    keys = zip(df.note_id, df.sentence_index if "sentence_index" in df else df.section_category)
    return dict(zip(keys, V.decode_vectors(df)))


def _strip_to_schema_2_1(root: Path, fmt: str) -> None:
    """Rewrite embeddings and note_embeddings as schema 2.1 wrote them (no compact columns)."""
    for name in ("embeddings", "note_embeddings"):
        drop = [c for c in V.VECTOR_COLUMNS if c != "embedding"]
        if fmt == "delta":
            from deltalake import DeltaTable, write_deltalake

            t = DeltaTable(str(root / name)).to_pyarrow_table().drop_columns(drop)
            shutil.rmtree(root / name)
            write_deltalake(str(root / name), t, partition_by=["run_id"])
            continue
        for f in (root / name).rglob("*.parquet"):
            pq.write_table(pq.read_table(f).drop_columns(
                [c for c in drop if c in pq.read_schema(f).names]), f)
            f.with_name(f".{f.name}.crc").unlink(missing_ok=True)  # Hadoop's checksum of it


def _check_one_format(root, fmt, storage, run):
    emb, nv = _read(root, "embeddings", fmt), _read(root, "note_embeddings", fmt)
    assert emb.fingerprint.nunique() == 1 and nv.fingerprint.nunique() == 1  # never mixed
    assert set(emb.vector_format) == {storage} and set(nv.vector_format) == {storage}
    holder = {"float32": "embedding", "float16": "embedding_f16", "int8": "embedding_i8"}
    for df in (emb, nv):
        for c in ("embedding", "embedding_f16", "embedding_i8"):
            if c != holder[storage]:
                assert df[c].isna().all(), c
    assert run["status"] == "succeeded"
    return emb, nv


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_pipeline_switches_format_without_mixing(spark, tiny_bert, tmp_path, fmt):
    """float32 -> (the tables as schema 2.1 wrote them) -> float16 (Parquet) or int8 (Delta,
    through a schema change in the Delta log) on one root. Later runs are the DAG's embed and
    aggregate stages."""
    from clinicalbert_spark.pipeline import Pipeline

    notes = _notes_csv(tmp_path / "notes.csv")
    root = tmp_path / "out"
    r1 = Pipeline(_cfg(notes, root, tiny_bert, "r1", "float32", fmt), spark).run()
    emb1, _ = _check_one_format(root, fmt, "float32", r1)
    base = _vectors(emb1)
    n = len(emb1)
    assert sum(v is None for v in base.values()) == 1  # the zero-width sentence: no vector
    key, vec = next((k, v) for k, v in base.items() if v is not None)

    # A table written before schema 2.2 (no compact columns) is read and stays current.
    _strip_to_schema_2_1(root, fmt)
    later = ("embed", "aggregate")
    if fmt == "parquet":
        r = Pipeline(_cfg(notes, root, tiny_bert, "r1b", "float32", fmt, later), spark).run()
        assert r["sentences_embedded"] == 0 and r["note_vectors"] == 0
        near = Q.nearest(root, query_vector=vec, k=3)
        assert (near.note_id.iloc[0], near.sentence_index.iloc[0]) == key

    storage = "float16" if fmt == "parquet" else "int8"
    r = Pipeline(_cfg(notes, root, tiny_bert, "r2", storage, fmt, later), spark).run()
    assert r["sentences_embedded"] == n and r["embeddings_removed"] == n  # all re-embedded
    emb, nv = _check_one_format(root, fmt, storage, r)
    got = _vectors(emb)
    assert got.keys() == base.keys()
    tol = {"float16": 2e-3, "int8": 1e-2}[storage]
    for k, v in base.items():
        if v is None:
            assert got[k] is None
        else:
            np.testing.assert_allclose(got[k], v, atol=tol * float(np.abs(v).max()))
    # note vectors: the mean of the decoded sentence vectors, stored in the same format
    whole = nv[nv.section_category.isna()]
    for row, mean in zip(whole.itertuples(), V.decode_vectors(whole)):
        sent = [got[k] for k in got if k[0] == row.note_id and got[k] is not None]
        np.testing.assert_allclose(mean, np.mean(sent, axis=0),
                                   atol=tol * float(np.abs(mean).max()))
    # nearest reads the compact table: a stored sentence finds itself first
    near = Q.nearest(root, query_vector=vec, k=3)
    assert (near.note_id.iloc[0], near.sentence_index.iloc[0]) == key
    assert near.score.iloc[0] == pytest.approx(1.0, abs=tol)
