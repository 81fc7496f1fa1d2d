"""Readers for note corpora and tables, and the rejects account (writing and table state:
:mod:`clinicalbert_spark.state`).

Everything here is Spark glue over plain files: notes come from a MIMIC-III NOTEEVENTS CSV,
Parquet, Delta or a catalog table. Note text never appears in a log line or exception
message raised here.

CSV notes are read with Python's csv module through a Spark Python data source
(:mod:`clinicalbert_spark.csv_source`) so that the text is exactly as stored; columns are
found by name (ignoring case where that is unambiguous) and read by position.

Delta: when the session is configured for Spark's own Delta source (the io.delta extension
or catalog, or Databricks) it reads Delta; otherwise the current version's files are listed
with ``deltalake`` (delta-rs) and read as Parquet.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import csv_source
from .config import InputConfig
from .errors import InputError  # re-exported: the historical import path

log = logging.getLogger(__name__)

NOTEEVENTS_COLUMNS = [
    "ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME",
    "CATEGORY", "DESCRIPTION", "CGID", "ISERROR", "TEXT",
]
CORRUPT_COLUMN = "_corrupt_record"

# Reasons a note lands in the rejects table (documented in README "Rejects").
REJECT_REASONS = {
    "malformed_record": "the CSV record could not be parsed into the expected columns",
    "missing_id": "the note id is null or empty",
    "iserror": "ISERROR = 1 (MIMIC-III marks the note as entered in error)",
    "null_text": "the text is null",
    "empty_text": "the text is empty or only whitespace",
    "invalid_utf8": "the text held bytes that are not valid UTF-8",
    "too_large": "the text is longer than input.max_note_chars",
    "duplicate_id": "another record with the same note id came first; this one is not used",
    "segmentation_error": "the segmenter raised an error on this note",
}

REJECTS_SCHEMA = T.StructType([
    T.StructField("note_id", T.StringType()),
    T.StructField("reason", T.StringType()),
    T.StructField("source_row", T.LongType()),
    T.StructField("detail", T.StringType()),
])



# --------------------------------------------------------------------------------------------
# Paths and formats


def _is_local(path: str) -> bool:
    scheme = urlparse(path).scheme
    return scheme in ("", "file") or len(scheme) == 1  # "C:" on Windows


def _local(path: str) -> Path:
    return Path(urlparse(path).path if path.startswith("file:") else path)


def absolute(path: str | None) -> str | None:
    """A relative local path made absolute: Spark executors (and a Spark Connect server) do
    not share this process's working directory."""
    if not path or not _is_local(path) or path.startswith("file:"):
        return path
    return str(Path(path).absolute())


def absolute_paths(cfg):
    """``cfg`` (a PipelineConfig) with its local input and output paths made absolute."""
    inp = cfg.input
    if inp.format != "table":
        inp = inp.model_copy(update={"path": absolute(inp.path)})
    out = cfg.output.model_copy(update={"path": absolute(cfg.output.path),
                                        "root": absolute(cfg.output.root)})
    return cfg.model_copy(update={"input": inp, "output": out})


def is_delta_path(path: str) -> bool:
    if _is_local(path):
        return (_local(path) / "_delta_log").is_dir()
    try:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(path)
    except Exception:  # noqa: BLE001 - object stores without credentials
        return False


def infer_format(path: str, spark: SparkSession | None = None) -> str:
    """Guess ``csv``, ``parquet``, ``delta`` or ``table`` from a path or table name."""
    low = path.lower().rstrip("/")
    if low.endswith(csv_source.CSV_SUFFIXES):
        return "csv"
    if low.endswith(".parquet"):
        return "parquet"
    if is_delta_path(path):
        return "delta"
    if _is_local(path):
        p = _local(path)
        if p.is_dir():
            names = [q.name.lower() for q in p.rglob("*") if q.is_file()]
            if any(n.endswith(".parquet") for n in names):
                return "parquet"
            if any(n.endswith(csv_source.CSV_SUFFIXES) for n in names):
                return "csv"
            raise InputError(f"cannot tell the format of folder {path}; pass --input-format")
        if p.exists():
            raise InputError(f"cannot tell the format of file {path}; pass --input-format")
        if spark is not None and "/" not in path and spark.catalog.tableExists(path):
            return "table"
        raise InputError(f"input not found: {path}")
    return "parquet"


def spark_has_delta(spark: SparkSession) -> bool:
    """True when the session is set up for Spark's own Delta source: the io.delta extension or
    catalog is configured, or it is a Databricks runtime. Read from the session's settings
    only (no py4j), so it also answers over Spark Connect."""
    def conf(key: str) -> str:
        try:
            return spark.conf.get(key, "") or ""
        except Exception:  # noqa: BLE001 - a setting the server will not show
            return ""

    return ("DeltaSparkSessionExtension" in conf("spark.sql.extensions")
            or "DeltaCatalog" in conf("spark.sql.catalog.spark_catalog")
            or bool(conf("spark.databricks.clusterUsageTags.sparkVersion")))


# --------------------------------------------------------------------------------------------
# Reading notes


@dataclass
class Notes:
    """Notes split into the ones to process and the ones rejected (with reasons)."""

    notes: DataFrame  # note_id, subject_id, hadm_id, category, text, note_hash, source_row
    rejects: DataFrame  # REJECTS_SCHEMA
    # Every record: the columns of ``notes`` plus reject_reason / reject_detail (null for a
    # usable note). ``notes`` and ``rejects`` are its two halves; a job that needs both
    # reads and checks the input once by persisting this (see :func:`split_records`).
    records: DataFrame | None = None


NOTE_COLUMNS = ("note_id", "subject_id", "hadm_id", "category", "text", "note_hash",
                "source_row")
REASON_COLUMNS = ("reject_reason", "reject_detail")  # what a records frame adds


def split_records(records: DataFrame) -> Notes:
    """:class:`Notes` of a ``records`` frame (persist it first to read the input once)."""
    return Notes(notes=records.where(F.col(REASON_COLUMNS[0]).isNull()).select(*NOTE_COLUMNS),
                 rejects=rejected_records(records), records=records)


def count_records(notes: Notes) -> tuple[int, int]:
    """(usable notes, rejected records) of ``notes``: one pass over its persisted
    ``records`` where it has them."""
    if notes.records is None:
        return notes.notes.count(), notes.rejects.count()
    reason = F.col(REASON_COLUMNS[0])
    row = notes.records.agg(F.count(F.when(reason.isNull(), True)),
                            F.count(F.when(reason.isNotNull(), True))).first()
    return int(row[0]), int(row[1])


def rejected_records(records: DataFrame) -> DataFrame:
    """The rejects (``REJECTS_SCHEMA``) of any frame that carries :data:`REASON_COLUMNS`."""
    reason, detail = REASON_COLUMNS
    return records.where(F.col(reason).isNotNull()).select(
        "note_id", F.col(reason).alias("reason"), "source_row", F.col(detail).alias("detail"))


def _csv_with_header(path: str, encoding: str) -> csv_source.CsvLayout:
    """The files and header row of a CSV input (the records are read by :func:`read_notes`
    and :func:`read_columns`); a header row is required.

    CSV notes are read with Python's csv module (:mod:`clinicalbert_spark.csv_source`), not
    Spark's CSV reader, which rewrites ``\\r\\n`` inside quoted text of a Windows export and
    cannot tell a stored U+FFFD from an undecodable byte.
    """
    layout = csv_source.csv_layout(path, encoding)
    if layout.header is None:
        raise InputError(
            f"the first line of CSV input {layout.files[0]} is not a header row (it has "
            f"{layout.header_fields} fields and ends inside quotes, holds undecodable bytes "
            "or is over 1 MB); a header row naming the columns is required")
    return layout


def read_table(spark: SparkSession, path: str, fmt: str = "auto") -> DataFrame:
    """Read a Parquet or Delta table (or a catalog table) written by any engine."""
    if fmt == "auto":
        fmt = infer_format(path, spark)
    if fmt == "table":
        return spark.table(path)
    if fmt == "parquet":
        return spark.read.parquet(path)
    if fmt == "delta":
        if spark_has_delta(spark):
            return spark.read.format("delta").load(path)
        from deltalake import DeltaTable

        dt = DeltaTable(path)
        if dt.protocol().min_reader_version > 1 and "deletionVectors" in (
            dt.protocol().reader_features or []
        ):
            raise InputError(
                f"Delta table {path} uses deletion vectors; read it with Spark's Delta "
                "(add the io.delta package) or run OPTIMIZE/PURGE first"
            )
        files = dt.file_uris()
        if not files:
            return spark.createDataFrame([], _spark_schema_of_delta(dt))
        df = spark.read.option("mergeSchema", "false").parquet(*files)
        parts = dt.metadata().partition_columns
        if parts:  # delta-rs keeps partition values in the log, not always in the path
            df = _add_delta_partition_columns(spark, df, dt, parts)
        return df
    if fmt == "csv":
        raise InputError(f"{path} is a CSV file: output tables are Parquet or Delta "
                         "(notes CSVs are read by read_notes)")
    raise InputError(f"unknown format {fmt!r}")


def _spark_schema_of_delta(dt) -> T.StructType:
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.schema(dt.schema().to_arrow()))


def _add_delta_partition_columns(spark, df, dt, parts) -> DataFrame:
    # Map each data file to its partition values from the Delta log and join them on.
    adds = dt.get_add_actions(flatten=True)
    import pyarrow as pa

    tbl = pa.table(adds)
    paths = tbl.column("path").to_pylist()
    root = dt.table_uri.rstrip("/")
    rows = []
    for i, p in enumerate(paths):
        uri = p if "://" in p else f"{root}/{p}"
        vals = [tbl.column(f"partition.{c}")[i].as_py() for c in parts]
        rows.append([_normalise_uri(uri)] + [None if v is None else str(v) for v in vals])
    schema = T.StructType([T.StructField("_file", T.StringType())]
                          + [T.StructField(c, T.StringType()) for c in parts])
    mapping = spark.createDataFrame(rows, schema)
    with_file = df.drop(*[c for c in parts if c in df.columns]).withColumn(
        "_file", _file_uri_col())
    return with_file.join(F.broadcast(mapping), "_file", "left").drop("_file")


def _file_uri_col() -> Column:
    return F.regexp_replace(F.input_file_name(), r"^file:/+", "/")


def _normalise_uri(uri: str) -> str:
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return "/" + uri.lstrip("/") if not urlparse(uri).scheme else uri


CSV_FILE_ROW_STRIDE = csv_source.FILE_ROW_STRIDE  # source_row of a CSV record: file * stride + i
ISERROR_TRUE = ("1", "1.0", "true", "t", "y", "yes")  # ISERROR spellings that mean "in error"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .-]{0,63}$")
# (role, config key, required, output column)
_ROLES = (
    ("id", "id_column", True, "note_id"),
    ("text", "text_column", True, "text"),
    ("subject", "subject_column", False, "subject_id"),
    ("hadm", "hadm_column", False, "hadm_id"),
    ("category", "category_column", False, "category"),
    ("iserror", "iserror_column", False, "iserror"),
)


def _look_like_names(names: list[str]) -> bool:
    """True when every name looks like a column name, so that listing them shows no data
    (the "header" of a header-less CSV is a note's first record)."""
    return bool(names) and all(_IDENTIFIER.match(n) for n in names)


def _shown(names: list[str]) -> str:
    return repr(names[:30] + (["..."] if len(names) > 30 else []))


def _missing_columns_message(missing: list[str], names: list[str], fmt: str) -> str:
    fix = ("Pass id_col= / text_col= naming them." if fmt == "dataframe" else
           "Set --id-col / --text-col (input.id_column / input.text_column) for non-MIMIC "
           "corpora.")
    if _look_like_names(names):
        return f"input lacks column(s) {missing}; found {_shown(names)}. {fix}"
    if fmt == "csv":
        return (f"input lacks column(s) {missing}: the first line of the CSV has {len(names)} "
                "fields that do not all look like column names; a header row naming the "
                f"columns is required. {fix}")
    return (f"input lacks column(s) {missing}; its {len(names)} column names are not shown "
            f"(not all look like names). {fix}")


def match_column(names: list[str], want: str, setting: str) -> int | None:
    """Position of column ``want`` among ``names``: the exact name, else the one name that
    differs from it only by case; None when there is none. ``setting`` (the flag or key that
    named it) is quoted when the name is ambiguous."""
    exact = [i for i, n in enumerate(names) if n == want]
    if len(exact) > 1:
        raise InputError(f"{setting} {want!r} names {len(exact)} columns of the input; "
                         "column names must be unique")
    if exact:
        return exact[0]
    folded = [i for i, n in enumerate(names) if n.casefold() == want.casefold()]
    if len(folded) > 1:
        which = _shown([names[i] for i in folded]) if _look_like_names(names) else (
            f"{len(folded)} columns")
        raise InputError(f"{setting} {want!r} matches columns that differ only by case "
                         f"({which}); set {setting} to one of them exactly")
    return folded[0] if folded else None


def _resolve_columns(names: list[str], cfg: InputConfig, fmt: str) -> dict[str, int | None]:
    """Position of each configured column: the exact name first, else the one column whose
    name differs only by case. A configured optional column that is absent is logged once."""
    found: dict[str, int | None] = {}
    for role, key, _required, _out in _ROLES:
        want = getattr(cfg, key)
        found[role] = match_column(names, want, f"input.{key}") if want else None
    missing = [getattr(cfg, key) for role, key, required, _ in _ROLES
               if required and found[role] is None]
    if missing:
        raise InputError(_missing_columns_message(missing, names, fmt))
    for role, key, required, out in _ROLES:
        if not required and getattr(cfg, key) and found[role] is None:
            effect = ("no note is rejected as iserror" if role == "iserror"
                      else f"{out} is null for every note")
            log.warning("input.%s %r is not a column of the input; %s", key, getattr(cfg, key),
                        effect)
    return found


def _string_of(c: Column, dt: T.DataType) -> tuple[Column, Column | None]:
    """(the value as a string, whether its bytes are valid UTF-8 or None when always valid).

    Binary and string columns keep their bytes as they are (a Parquet string may hold invalid
    UTF-8); integral floats (pandas writes ids with a NaN as float64) become integer strings.
    """
    if isinstance(dt, T.StringType):
        return c, F.is_valid_utf8(c)
    if isinstance(dt, T.BinaryType):
        s = c.cast("string")  # the same bytes, not validated
        return s, F.is_valid_utf8(s)
    if isinstance(dt, (T.FloatType, T.DoubleType)):
        integral = (F.abs(c) < 1e15) & (c == F.round(c, 0))
        return (F.when(F.isnan(c), F.lit(None).cast("string"))
                .when(integral, c.cast("long").cast("string"))
                .otherwise(c.cast("string"))), None
    if isinstance(dt, T.DecimalType) and dt.scale > 0:
        return F.when(c == F.floor(c), F.floor(c).cast("string")).otherwise(c.cast("string")), None
    if isinstance(dt, (T.ArrayType, T.MapType, T.StructType)):
        return F.to_json(c), None
    return c.cast("string"), None


def _iserror_of(c: Column, dt: T.DataType) -> Column:
    """True when the flag is numerically 1 or one of :data:`ISERROR_TRUE` (any case)."""
    if isinstance(dt, T.BooleanType):
        flag = c
    elif isinstance(dt, T.NumericType):
        flag = c == 1
    elif isinstance(dt, (T.StringType, T.BinaryType)):
        s = F.trim(c.cast("string"))
        flag = F.lower(s).isin(*ISERROR_TRUE) | (s.try_cast("double") == 1)
    else:
        flag = F.lit(False)
    return F.coalesce(flag, F.lit(False))


def _error_condition(e: BaseException) -> str | None:
    """Spark's error condition (``PATH_NOT_FOUND``...): a name, never a data value."""
    for attr in ("getCondition", "getErrorClass"):
        get = getattr(e, attr, None)
        if get is not None:
            try:
                cond = get()
            except Exception:  # noqa: BLE001
                cond = None
            if cond:
                return str(cond)
    try:
        m = re.search(r"\[([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\]", str(e))
    except Exception:  # noqa: BLE001
        return None
    return m.group(1) if m else None


def _check_parquet_files(path: str) -> None:
    """Refuse a local file that is no Parquet file before Spark reads it: Spark's error quotes
    the file's last bytes, which may be note text."""
    root = _local(path)
    if root.is_file():
        files = [root]
    else:
        files = [f for f in sorted(root.rglob("*")) if f.is_file() and not any(
            part.startswith((".", "_")) for part in f.relative_to(root).parts)]
    for f in files:
        try:
            size = f.stat().st_size
            with open(f, "rb") as fh:
                head = fh.read(4)
                fh.seek(max(size - 4, 0))
                tail = fh.read(4)
        except OSError as e:
            raise InputError(f"cannot read input file {f}: {e.strerror or type(e).__name__}"
                             ) from None
        if size < 12 or head not in (b"PAR1", b"PARE") or tail not in (b"PAR1", b"PARE"):
            raise InputError(f"{f} is not a Parquet file; remove it from the input or pass "
                             "--input-format")


def read_input_table(spark: SparkSession, path: str, fmt: str) -> DataFrame:
    """``read_table`` for a note input: any failure to read it is one line naming no data."""
    if fmt in ("parquet", "delta"):
        # pandas writes datetime64[ns] as TIMESTAMP(NANOS), which Spark refuses unless it may
        # read such columns as longs; note inputs never need them as timestamps.
        key = "spark.sql.legacy.parquet.nanosAsLong"
        if spark.conf.get(key, "false").lower() != "true":
            spark.conf.set(key, "true")
            log.info("reading Parquet TIMESTAMP(NANOS) columns as longs (%s)", key)
    if fmt == "parquet" and _is_local(path) and _local(path).exists():
        _check_parquet_files(path)
    try:
        df = read_table(spark, path, fmt)
        df.schema  # noqa: B018 - resolve the schema now, inside the try
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - Spark, py4j and delta-rs raise many types
        cond = _error_condition(e)
        if cond == "PATH_NOT_FOUND":
            msg = f"input not found: {path}"
        elif cond and cond.startswith("COLUMN_ALREADY_EXISTS"):
            msg = (f"{fmt} input {path} has columns whose names differ only by case; "
                   "Spark cannot read it: rename one of them")
        elif cond == "UNABLE_TO_INFER_SCHEMA":
            msg = f"{fmt} input {path} holds no data files"
        else:
            msg = (f"cannot read {fmt} input {path} ({cond or type(e).__name__}); check the "
                   "path and --input-format")
        raise InputError(msg) from None
    return df


def _ids_repeat(ids: DataFrame) -> bool:
    """Whether any non-empty id (column ``_id``) occurs twice: one pass over the ids alone
    (a columnar input reads no text), so the common case of unique ids skips the duplicate
    search, which reads and checks every note's text a second time."""
    ids = ids.where(F.col("_id").isNotNull() & (F.col("_id") != ""))
    return bool(ids.groupBy("_id").count().where(F.col("count") > 1).limit(1).count())


def _reject_duplicates(df: DataFrame, rescan: bool) -> DataFrame:
    """``duplicate_id`` for every valid record of an id but its first (by ``source_row``).

    ``rescan`` (columnar inputs): found on (id, arrival) pairs from a second read; the ids
    that repeat are few, and joining them back by broadcast never moves the note text. A CSV
    is parsed in Python, so reading it twice costs more than one window over the notes.
    """
    valid = F.col("reject_reason").isNull()
    if rescan:
        repeated = (df.where(valid).groupBy("note_id")
                    .agg(F.min("source_row").alias("_kept"), F.count("*").alias("_n"))
                    .where(F.col("_n") > 1).select("note_id", "_kept"))
        df = df.join(F.broadcast(repeated), "note_id", "left")
    else:
        from pyspark.sql.window import Window

        df = df.withColumn("_kept", F.min(F.when(valid, F.col("source_row"))).over(
            Window.partitionBy("note_id")))
    dup = valid & F.col("_kept").isNotNull() & (F.col("source_row") != F.col("_kept"))
    return df.withColumn(
        "reject_detail",
        F.when(dup, F.concat(F.lit("kept source_row "), F.col("_kept").cast("string")))
        .otherwise(F.col("reject_detail")),
    ).withColumn(
        "reject_reason", F.when(dup, F.lit("duplicate_id")).otherwise(F.col("reject_reason")),
    ).drop("_kept")


def read_notes(spark: SparkSession, cfg: InputConfig) -> Notes:
    """Read a note corpus and split it into usable notes and rejects (nothing is dropped).

    Columns are found by name (exactly, else ignoring case) and read by position; the text is
    handed on exactly as stored (CSV: as Python's csv module reads it; Parquet: its bytes),
    and a record whose used fields hold bytes that are not valid UTF-8 becomes an
    ``invalid_utf8`` reject.
    """
    if not cfg.path:
        raise InputError("no input given (--input PATH or input.path)")
    if cfg.format != "table" and _is_local(cfg.path) and not _local(cfg.path).exists():
        raise InputError(f"input not found: {cfg.path}")
    fmt = cfg.format if cfg.format != "auto" else infer_format(cfg.path, spark)
    if fmt == "csv":
        layout = _csv_with_header(cfg.path, cfg.encoding)
        names = layout.header
        cols = _resolve_columns(names, cfg, fmt)
        df = csv_source.read_csv_frame(  # only the columns used are read on and checked
            spark, layout, [cols["text"]], max_field_chars=2 * cfg.max_note_chars,
            select=[i for i in cols.values() if i is not None])
        return _split_notes(df, names, [T.StringType()] * len(names), cols, cfg, fmt,
                            status=F.col(csv_source.STATUS_COLUMN),
                            source_row=F.col(csv_source.ROW_COLUMN))
    return notes_from_frame(read_input_table(spark, cfg.path, fmt), cfg, fmt)


def notes_from_frame(raw: DataFrame, cfg: InputConfig, fmt: str = "dataframe") -> Notes:
    """Usable notes and rejects of any DataFrame whose columns ``cfg`` names
    (``id_column``, ``text_column``, optional subject/hadm/category/iserror columns).

    The same checks as :func:`read_notes` (ids, ISERROR, empty or invalid text, duplicate
    ids); ``note_hash`` is computed here and ``source_row`` is the arrival order.
    """
    names = raw.columns
    cols = _resolve_columns(names, cfg, fmt)
    types = [f.dataType for f in raw.schema.fields]
    df = raw.toDF(*[csv_source.column_name(i) for i in range(len(names))])
    # Arrival order within the corpus; it decides which of two duplicate ids is kept.
    return _split_notes(df, names, types, cols, cfg, fmt, status=F.lit(None).cast("string"),
                        source_row=F.monotonically_increasing_id())


BAD_RECORD_COLUMN = "_bad_record"


def read_columns(spark: SparkSession, path: str, fmt: str, columns: dict[str, str],
                 what: str, hint: str, encoding: str = "UTF-8",
                 strings: bool = False) -> DataFrame:
    """Some columns of any table (CSV, Parquet, Delta, catalog table), named by their roles.

    ``columns`` maps a role (the output column) to the column that holds it, found as
    :func:`match_column` finds it; a missing one is one :class:`InputError` line naming the
    columns there are (``what``: the input's name in the message, ``hint``: the flags that
    name columns). CSV is read like CSV notes (exact text, every value a string, an empty
    field null); :data:`BAD_RECORD_COLUMN` is ``malformed_record`` / ``invalid_utf8`` for a
    CSV record the reader could not use, else null. Other formats keep their column types,
    or with ``strings`` become strings as note ids do (an integral float id is ``"101"``).
    """
    if fmt != "table" and _is_local(path) and not _local(path).exists():
        raise InputError(f"input not found: {path}")
    if fmt == "auto":
        fmt = infer_format(path, spark)
    layout = None
    if fmt == "csv":
        layout = _csv_with_header(path, encoding)
        names = layout.header
    else:
        raw = read_input_table(spark, path, fmt)
        names = raw.columns
    found = {role: match_column(names, want, f"the {what} input's {role} column")
             for role, want in columns.items()}
    missing = [columns[r] for r, i in found.items() if i is None]
    if missing:
        shown = (f"it has {_shown(names)}" if _look_like_names(names) else
                 f"its {len(names)} column names are not shown (not all look like names)")
        raise InputError(f"the {what} input lacks column(s) {missing}; {shown} ({hint})")
    if layout is not None:
        df = csv_source.read_csv_frame(spark, layout, [], max_field_chars=1 << 30,
                                       select=sorted(set(found.values())))
        bad = F.col(csv_source.STATUS_COLUMN)
    else:
        df = raw.toDF(*[csv_source.column_name(i) for i in range(len(names))])
        bad = F.lit(None).cast("string")
    types = [T.StringType()] * len(names) if layout is not None or not strings else [
        f.dataType for f in raw.schema.fields]
    return df.select(*[_string_of(F.col(csv_source.column_name(i)), types[i])[0].alias(r)
                       if strings else F.col(csv_source.column_name(i)).alias(r)
                       for r, i in found.items()], bad.alias(BAD_RECORD_COLUMN))


def _split_notes(df: DataFrame, names: list[str], types: list[T.DataType],
                 cols: dict[str, int | None], cfg: InputConfig, fmt: str, status: Column,
                 source_row: Column) -> Notes:
    """``status``: malformed_record / invalid_utf8 as found by the reader (CSV), else null."""

    values: dict[str, Column] = {}
    checks: list[tuple[str, Column]] = []  # (input column name, bytes valid)
    for role, _key, _required, _out in _ROLES:
        i = cols[role]
        if i is None:
            continue
        c = F.col(csv_source.column_name(i))
        values[role], valid = _string_of(c, types[i])
        if role == "iserror":
            values[role] = _iserror_of(c, types[i])
        if valid is not None and fmt != "csv":  # the CSV reader checks the fields it reads
            checks.append((names[i], F.coalesce(valid, F.lit(True))))

    def value(role: str) -> Column:
        return values[role] if role in values else F.lit(None).cast("string")

    all_valid = F.lit(True)
    for _name, ok in checks:
        all_valid = all_valid & ok
    text = values["text"]
    note_id = F.trim(values["id"])
    note_id = F.when(all_valid, note_id).otherwise(F.make_valid_utf8(note_id))
    iserror = values.get("iserror", F.lit(False))
    reason = (
        F.when(status.isNotNull(), status)
        .when(~all_valid, F.lit("invalid_utf8"))
        .when(note_id.isNull() | (note_id == ""), F.lit("missing_id"))
        .when(iserror, F.lit("iserror"))
        .when(text.isNull(), F.lit("null_text"))
        .when(text.rlike(r"(?U)^\s*$"), F.lit("empty_text"))  # any Unicode whitespace
        # Characters never outnumber bytes: counting characters (a walk over the whole
        # text) is left to the few notes whose bytes already exceed the limit.
        .when((F.octet_length(text) > cfg.max_note_chars)
              & (F.length(text) > cfg.max_note_chars), F.lit("too_large"))
    )
    bad_columns = F.concat_ws(", ", *[F.when(~ok, F.lit(n)) for n, ok in checks]) if checks \
        else F.lit(None).cast("string")

    def clean(c: Column) -> Column:  # an invalid record's fields never travel on raw
        return F.when(all_valid, c).otherwise(F.make_valid_utf8(c))

    raw_ids = df.select(F.trim(values["id"]).alias("_id"))
    df = df.select(
        note_id.alias("note_id"),
        clean(value("subject")).alias("subject_id"),
        clean(value("hadm")).alias("hadm_id"),
        # MIMIC-III writes some categories with a trailing space ("Physician ").
        F.trim(clean(value("category"))).alias("category"),
        F.when(status.isNull() & all_valid, text).alias("text"),  # bad records: no text
        source_row.alias("source_row"),
        reason.alias("reject_reason"),
        F.when(reason == "too_large", F.concat(F.lit("chars="), F.length(text).cast("string")))
        .when(reason == "malformed_record", F.lit("unparseable CSV record"))
        .when((reason == "invalid_utf8") & (status.isNull()),
              F.concat(F.lit("not valid UTF-8: "), bad_columns))
        .alias("reject_detail"),
    )
    # Of several records with one id, the first in arrival order is used and the rest rejected.
    if fmt != "csv" and not _ids_repeat(raw_ids):
        ranked = df  # no id occurs twice: no duplicate can be rejected
    else:
        ranked = _reject_duplicates(df, rescan=fmt != "csv")

    ok = F.col("reject_reason").isNull()
    return split_records(ranked.select(
        "note_id", "subject_id", "hadm_id", "category", F.when(ok, F.col("text")).alias("text"),
        F.when(ok, F.sha2(F.col("text"), 256).substr(1, 32)).alias("note_hash"), "source_row",
        "reject_reason", "reject_detail"))
