"""Readers for note corpora, writers for output tables, and the rejects account.

Everything here is Spark glue over plain files: notes come from a MIMIC-III NOTEEVENTS CSV,
Parquet, Delta or a catalog table; tables go to Parquet or Delta. Note text never appears in
a log line or exception message raised here.

Delta: when the SparkSession has the ``io.delta`` jars (Databricks, EMR, ``--packages``)
Spark's own Delta reader and writer are used. Otherwise (these machines, plain pip installs)
Spark writes the Parquet data files and the driver commits them to the Delta log in one
transaction with ``deltalake`` (delta-rs): no data passes through the driver and a table
holds either all of a write's files or none of them.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

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
    if low.endswith((".csv", ".csv.gz", ".csv.bz2", ".tsv")):
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
            if any(n.endswith((".csv", ".csv.gz")) for n in names):
                return "csv"
            raise InputError(f"cannot tell the format of folder {path}; pass --input-format")
        if p.exists():
            raise InputError(f"cannot tell the format of file {path}; pass --input-format")
        if spark is not None and "/" not in path and spark.catalog.tableExists(path):
            return "table"
        raise InputError(f"input not found: {path}")
    return "parquet"


def spark_has_delta(spark: SparkSession) -> bool:
    """True when Spark's own Delta data source (the io.delta jars) is on the classpath."""
    try:
        spark._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")  # type: ignore[union-attr]
        return True
    except Exception:  # noqa: BLE001 - py4j raises a generic error for a missing class
        return False


# --------------------------------------------------------------------------------------------
# Reading notes


@dataclass
class Notes:
    """Notes split into the ones to process and the ones rejected (with reasons)."""

    notes: DataFrame  # note_id, subject_id, hadm_id, category, text, note_hash, source_row
    rejects: DataFrame  # REJECTS_SCHEMA


def _read_csv(spark: SparkSession, cfg: InputConfig) -> DataFrame:
    # Read the header first so that any column layout works, then pin every column to string:
    # ids stay exactly as written ("00123") and a bad value cannot null out a whole row.
    header = (
        spark.read.option("header", True).option("multiLine", True).option("escape", '"')
        .option("encoding", cfg.encoding).csv(cfg.path).columns
    )
    if not header:
        raise InputError(f"CSV input {cfg.path} has no header row")
    schema = T.StructType(
        [T.StructField(c, T.StringType()) for c in header]
        + [T.StructField(CORRUPT_COLUMN, T.StringType())]
    )
    return (
        spark.read.schema(schema)
        .option("header", True)
        .option("multiLine", True)  # MIMIC TEXT fields hold newlines inside quotes
        .option("escape", '"')  # "" inside a quoted field is a literal quote
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT_COLUMN)
        .option("encoding", cfg.encoding)
        .option("nullValue", None)
        .option("emptyValue", "")
        .csv(cfg.path)
    )


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


def read_notes(spark: SparkSession, cfg: InputConfig) -> Notes:
    """Read a note corpus and split it into usable notes and rejects (nothing is dropped)."""
    if not cfg.path:
        raise InputError("no input given (--input PATH or input.path)")
    if cfg.format != "table" and _is_local(cfg.path) and not _local(cfg.path).exists():
        raise InputError(f"input not found: {cfg.path}")
    fmt = cfg.format if cfg.format != "auto" else infer_format(cfg.path, spark)
    raw = _read_csv(spark, cfg) if fmt == "csv" else read_table(spark, cfg.path, fmt)

    missing = [c for c in (cfg.id_column, cfg.text_column) if c not in raw.columns]
    if missing:
        raise InputError(
            f"input lacks column(s) {missing}; found {raw.columns}. "
            "Set input.id_column / input.text_column for non-MIMIC corpora."
        )

    def opt(col: str | None) -> Column:
        if col and col in raw.columns:
            return F.col(col).cast("string")
        return F.lit(None).cast("string")

    # Arrival order within the corpus: a multi-line CSV file is one partition, so this is the
    # record's position in the file; it identifies which of two duplicate ids was kept.
    df = raw.withColumn("source_row", F.monotonically_increasing_id())
    corrupt = F.col(CORRUPT_COLUMN).isNotNull() if CORRUPT_COLUMN in raw.columns else F.lit(False)
    text = F.col(cfg.text_column).cast("string")
    note_id = F.trim(F.col(cfg.id_column).cast("string"))
    iserror = opt(cfg.iserror_column)
    reason = (
        F.when(corrupt, F.lit("malformed_record"))
        .when(note_id.isNull() | (note_id == ""), F.lit("missing_id"))
        .when(F.trim(iserror) == "1", F.lit("iserror"))
        .when(text.isNull(), F.lit("null_text"))
        .when(text.rlike(r"(?U)^\s*$"), F.lit("empty_text"))  # any Unicode whitespace
        .when(F.length(text) > cfg.max_note_chars, F.lit("too_large"))
    )
    if fmt == "csv":  # the CSV decoder turns undecodable bytes into U+FFFD
        reason = reason.when(F.instr(text, "\ufffd") > 0, F.lit("invalid_utf8"))

    df = df.select(
        note_id.alias("note_id"),
        opt(cfg.subject_column).alias("subject_id"),
        opt(cfg.hadm_column).alias("hadm_id"),
        # MIMIC-III writes some categories with a trailing space ("Physician ").
        F.trim(opt(cfg.category_column)).alias("category"),
        F.when(~corrupt, text).alias("text"),  # never carry a corrupt record's raw line
        "source_row",
        reason.alias("reject_reason"),
        F.when(reason == "too_large", F.concat(F.lit("chars="), F.length(text).cast("string")))
        .when(reason == "malformed_record", F.lit("unparseable CSV record"))
        .alias("reject_detail"),
    )
    # Of several records with one id, the first in arrival order is used and the rest rejected.
    from pyspark.sql.window import Window

    w = Window.partitionBy("note_id")
    valid = F.col("reject_reason").isNull()
    ranked = df.withColumn("_dup_rank", F.when(valid, F.row_number().over(
        Window.partitionBy("note_id", F.col("reject_reason").isNull()).orderBy("source_row"))))
    ranked = ranked.withColumn(
        "reject_reason",
        F.when(valid & (F.col("_dup_rank") > 1), F.lit("duplicate_id")).otherwise(
            F.col("reject_reason")),
    ).withColumn(
        "reject_detail",
        F.when(F.col("reject_reason") == "duplicate_id",
               F.concat(F.lit("kept source_row "), F.min(F.when(
                   F.col("_dup_rank").isNotNull(), F.col("source_row"))).over(w).cast("string")))
        .otherwise(F.col("reject_detail")),
    ).drop("_dup_rank")

    notes = ranked.where(F.col("reject_reason").isNull()).select(
        "note_id", "subject_id", "hadm_id", "category", "text",
        F.sha2(F.col("text"), 256).substr(1, 32).alias("note_hash"), "source_row",
    )
    rejects = ranked.where(F.col("reject_reason").isNotNull()).select(
        "note_id", F.col("reject_reason").alias("reason"), "source_row",
        F.col("reject_detail").alias("detail"),
    )
    return Notes(notes=notes, rejects=rejects)


# --------------------------------------------------------------------------------------------
# Writing tables


def table_exists(spark: SparkSession, path: str, fmt: str) -> bool:
    if fmt == "delta":
        return is_delta_path(path)
    # A folder left by a failed first write holds no data file: that is no table yet.
    jvm = spark._jvm  # type: ignore[union-attr]
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark._jsc.hadoopConfiguration())  # type: ignore[union-attr]
    if not fs.exists(hpath):
        return False
    files = fs.listFiles(hpath, True)
    while files.hasNext():
        p = files.next().getPath()
        name = p.getName()
        if name.endswith(".parquet") and "/_" not in p.toUri().getPath()[len(path):]:
            return True
    return False


def delete_path(spark: SparkSession, path: str) -> None:
    jvm = spark._jvm  # type: ignore[union-attr]
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark._jsc.hadoopConfiguration())  # type: ignore[union-attr]
    if fs.exists(hpath):
        fs.delete(hpath, True)


def write_table(
    df: DataFrame,
    path: str,
    fmt: str = "parquet",
    mode: str = "overwrite",
    partition_by: str | None = None,
    replace_partitions: Iterable[str] | None = None,
) -> None:
    """Write ``df`` as a Parquet or Delta table.

    With ``partition_by`` and ``replace_partitions``, only those partition values are
    replaced (every other partition is left as it is); values absent from ``df`` are emptied.
    This is what makes a re-run of the same run id idempotent.
    """
    spark = df.sparkSession
    if fmt not in ("parquet", "delta"):
        raise ValueError(f"unknown output format {fmt!r}")
    replace = sorted(set(replace_partitions or []))
    if fmt == "parquet":
        writer = df.write.option("compression", "zstd")
        if partition_by:
            writer = writer.partitionBy(partition_by)
        if replace:
            for value in replace:  # partitions the new data does not recreate must still go
                delete_path(spark, f"{path.rstrip('/')}/{partition_by}={value}")
            writer.mode("append").parquet(path)
        else:
            writer.mode(mode).parquet(path)
        return
    if spark_has_delta(spark):
        writer = df.write.format("delta")
        if partition_by:
            writer = writer.partitionBy(partition_by)
        if replace:
            cond = " OR ".join(f"{partition_by} = '{_sql_str(v)}'" for v in replace)
            writer.mode("overwrite").option("replaceWhere", cond).save(path)
        else:
            writer.mode(mode).save(path)
        return
    _write_delta_rs(df, path, mode, partition_by, replace)


def _sql_str(v: str) -> str:
    return v.replace("'", "''")


def _write_delta_rs(df: DataFrame, path: str, mode: str, partition_by: str | None,
                    replace: list[str]) -> None:
    """Spark writes the data files, the driver commits them with delta-rs in one transaction."""
    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake import Schema as DeltaSchema
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction, create_table_with_add_actions
    from pyspark.sql.pandas.types import to_arrow_schema

    if not _is_local(path):
        raise NotImplementedError(
            "writing Delta to object stores needs Spark's Delta jars (spark.jars.packages "
            "io.delta:delta-spark_2.13:<version>); delta-rs commits here cover local paths"
        )
    root = _local(path)
    staging_rel = f"data-{uuid.uuid4().hex[:12]}"
    staging = root / staging_rel
    writer = df.write.option("compression", "zstd")
    if partition_by:
        writer = writer.partitionBy(partition_by)
    writer.mode("overwrite").parquet(str(staging))

    data_cols = [f for f in df.schema.fields if f.name != partition_by]
    part_cols = [f for f in df.schema.fields if f.name == partition_by]
    arrow_schema = to_arrow_schema(T.StructType(data_cols + part_cols), timezone="UTC")
    actions = []
    for f in sorted(staging.rglob("*.parquet")):
        rel = f.relative_to(root).as_posix()
        pvals: dict[str, str | None] = {}
        if partition_by:
            seg = f.parent.name
            assert seg.startswith(partition_by + "="), seg
            raw = seg.split("=", 1)[1]
            from urllib.parse import unquote

            pvals[partition_by] = None if raw == "__HIVE_DEFAULT_PARTITION__" else unquote(raw)
        st = f.stat()
        actions.append(AddAction(rel, st.st_size, pvals, int(st.st_mtime * 1000), True,
                                 json.dumps({"numRecords": _parquet_rows(f)})))
    parts = [partition_by] if partition_by else None
    for attempt in range(5):
        try:
            if not DeltaTable.is_deltatable(str(root)):
                if mode == "error" and root.exists() and any(
                        p.name != staging_rel for p in root.iterdir()):
                    raise FileExistsError(f"output {path} exists")
                create_table_with_add_actions(
                    str(root), DeltaSchema.from_arrow(pa.schema(arrow_schema)), actions,
                    mode="overwrite", partition_by=parts)
                return
            dt = DeltaTable(str(root))
            if replace:
                filters = [(partition_by, "in", replace)]
                dt.create_write_transaction(actions, mode="overwrite", schema=dt.schema(),
                                            partition_by=parts, partition_filters=filters)
            elif mode == "append":
                dt.create_write_transaction(actions, mode="append", schema=dt.schema(),
                                            partition_by=parts)
            elif mode == "error":
                raise FileExistsError(f"output {path} exists")
            else:
                dt.create_write_transaction(
                    actions, mode="overwrite",
                    schema=DeltaSchema.from_arrow(pa.schema(arrow_schema)), partition_by=parts)
            return
        except CommitFailedError:
            if attempt == 4:
                raise
            log.warning("Delta commit to %s raced another writer; retrying", path)


def _parquet_rows(f: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(f).metadata.num_rows
