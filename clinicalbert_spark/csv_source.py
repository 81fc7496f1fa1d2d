"""Exact CSV reading for note corpora: a PySpark Python data source over Python's ``csv`` module.

Spark's own CSV reader changes text: in a multi-line file whose records end in ``\\r\\n`` it
turns every ``\\r\\n`` inside a quoted field into ``\\n``, it decodes undecodable bytes to U+FFFD
(so a stored U+FFFD and a broken byte look alike), and it reads a quoted empty field ``""`` as
null. Offsets and ``note_hash`` must refer to the text as stored, so CSV notes are read here
with Python's ``csv`` module (``open(path, newline='')`` semantics: the text of a field is
exactly what :func:`csv.reader` returns):

* one Spark partition per file (as Spark's multi-line CSV reader does anyway); ``.gz`` and
  ``.bz2`` files are decompressed while streaming;
* a header row is required; the columns come out positionally as ``_c0 .. _cN`` (every one a
  string), so header names with dots, blanks or odd case need no quoting;
* ``_cbs_row`` is the record's 0-based position in its file (header excluded) plus
  ``file index * FILE_ROW_STRIDE``, so several files never collide;
* ``_cbs_status`` is null for a good record, ``malformed_record`` for a wrong field count or an
  unparseable record, ``invalid_utf8`` when a field held bytes that are not valid in the
  configured encoding (such fields are handed on with U+FFFD in place of the bad bytes);
* an empty field is null, except in the ``keep_empty`` columns, where a quoted ``""`` stays an
  empty string (PostgreSQL, which exported MIMIC-III, writes NULL unquoted and '' as ``""``).

The driver lists the files and reads their header rows (:func:`csv_layout`); the executors
stream the records (:class:`NotesCsvSource`). Local paths are opened directly, URIs
(``s3://``, ``gs://``, ``hdfs://``, ``abfs://``, ``file://``) through ``pyarrow.fs``.
No message raised here holds a cell value.
"""
from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io as _io
import itertools
import json
import os
import re
from collections import deque
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition

from .errors import InputError

SOURCE_NAME = "cbs_notes_csv"
FILE_ROW_STRIDE = 10**12  # source_row = file index * stride + record index in the file
ROW_COLUMN = "_cbs_row"
STATUS_COLUMN = "_cbs_status"
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".tsv.gz", ".tsv.bz2")
MAX_HEADER_CHARS = 1 << 20
_BATCH_ROWS = 1024  # small batches keep the Python parser and the JVM working in step
_BATCH_CHARS = 4 << 20
_MAX_FIELD = 2**31 - 1  # Arrow's limit for one string


def column_name(i: int) -> str:
    return f"_c{i}"


# --------------------------------------------------------------------------------------------
# Files


def _is_uri(path: str) -> bool:
    scheme = urlparse(path).scheme
    return len(scheme) > 1  # "C:" is a Windows drive, not a scheme


def _local_form(path: str) -> str | None:
    """A local path for ``path`` when there is one (plain paths, ``file:``, Databricks FUSE)."""
    if not _is_uri(path):
        return path
    u = urlparse(path)
    if u.scheme == "file":
        return u.path
    if u.scheme == "dbfs" and os.path.isdir("/dbfs"):
        return "/dbfs" + u.path
    return None


def _arrow_fs(path: str):
    from pyarrow import fs as pafs

    uri = re.sub(r"^s3[an]://", "s3://", path)
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for unknown schemes
        raise InputError(
            f"cannot open {path} from Python ({type(e).__name__}): CSV notes are read with "
            "pyarrow.fs; use a local, s3://, gs://, hdfs:// or abfs:// path, or convert the "
            "CSV to Parquet") from None


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def list_csv_files(path: str) -> list[str]:
    """The CSV files of ``path`` (one file, or the CSV files of a folder tree), sorted."""
    local = _local_form(path)
    if local is not None:
        if os.path.isfile(local):
            return [path]
        if not os.path.isdir(local):
            raise InputError(f"input not found: {path}")
        found = []
        for root, dirs, files in os.walk(local):
            dirs[:] = sorted(d for d in dirs if not _hidden(d))
            found += [os.path.join(root, f) for f in files
                      if not _hidden(f) and f.lower().endswith(CSV_SUFFIXES)]
        if not found:
            raise InputError(f"folder {path} holds no CSV files (*.csv, *.csv.gz, *.tsv)")
        return sorted(found)
    from pyarrow import fs as pafs

    fs, p = _arrow_fs(path)
    try:
        info = fs.get_file_info(p)
        listing = (fs.get_file_info(pafs.FileSelector(p, recursive=True))
                   if info.type == pafs.FileType.Directory else [])
    except Exception as e:  # noqa: BLE001 - credentials, network: one line, no trace
        raise InputError(f"cannot list {path} ({type(e).__name__}); check the path and the "
                         "credentials Python sees") from None
    if info.type == pafs.FileType.File:
        return [path]
    if info.type != pafs.FileType.Directory:
        raise InputError(f"input not found: {path}")
    root = path.rstrip("/")
    found = []
    for f in listing:
        rel = f.path[len(p.rstrip("/")) + 1:]
        if (f.type == pafs.FileType.File and f.base_name.lower().endswith(CSV_SUFFIXES)
                and not any(_hidden(part) for part in rel.split("/"))):
            found.append(f"{root}/{rel}")
    if not found:
        raise InputError(f"folder {path} holds no CSV files (*.csv, *.csv.gz, *.tsv)")
    return sorted(found)


def open_text(path: str, encoding: str):
    """``path`` as a text stream: universal record ends kept (``newline=''``), bad bytes as
    lone surrogates (``errors='surrogateescape'``), ``.gz``/``.bz2`` decompressed."""
    low = path.lower()
    local = _local_form(path)
    if local is not None:
        if low.endswith(".gz"):
            raw = gzip.open(local, "rb")
        elif low.endswith(".bz2"):
            raw = bz2.open(local, "rb")
        else:
            raw = open(local, "rb", buffering=1 << 20)  # noqa: SIM115 - handed to the wrapper
    else:
        fs, p = _arrow_fs(path)
        raw = fs.open_input_stream(p, compression="detect")
    return _io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="")


def delimiter_for(path: str) -> str:
    low = path.lower()
    return "\t" if low.endswith((".tsv", ".tsv.gz", ".tsv.bz2")) else ","


# --------------------------------------------------------------------------------------------
# Driver side: files and header rows


@dataclass
class CsvLayout:
    files: list[str]
    header: list[str] | None  # None: the first line is no CSV record at all
    header_fields: int  # fields on the first line (for messages; no values)
    delimiter: str
    encoding: str


def python_encoding(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise InputError(f"input.encoding {name!r} is not an encoding Python knows; "
                         "use e.g. UTF-8, ISO-8859-1 or cp1252") from None


def read_header(path: str, encoding: str, delimiter: str) -> tuple[list[str] | None, int]:
    """The header row of one file: (names, field count); names None when the first line is
    not a complete CSV record (it ends inside quotes or is too long to be a header)."""
    try:
        with open_text(path, encoding) as f:
            line = f.readline(MAX_HEADER_CHARS)
    except InputError:
        raise
    except OSError as e:
        raise InputError(f"cannot read CSV input {path}: "
                         f"{e.strerror or type(e).__name__}") from None
    except Exception as e:  # noqa: BLE001 - bad gzip/bz2 streams raise assorted types
        raise InputError(f"cannot read CSV input {path} ({type(e).__name__}): "
                         "is it a valid (compressed) CSV file?") from None
    if not line:
        raise InputError(f"CSV input {path} is empty; a header row naming the columns is "
                         "required")
    if len(line) >= MAX_HEADER_CHARS and not line.endswith(("\n", "\r")):
        return None, 0
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, MAX_HEADER_CHARS + 1))  # a data line may hold a long field
    fields = 0
    try:
        fields = len(next(csv.reader([line], delimiter=delimiter), []))
        names = next(csv.reader([line], delimiter=delimiter, strict=True), [])
    except csv.Error:
        return None, fields
    finally:
        csv.field_size_limit(limit)
    if names and names[0].startswith("\ufeff"):  # a UTF-8 byte order mark
        names[0] = names[0][1:]
    if any("\udc80" <= ch <= "\udcff" for n in names for ch in n):
        return None, fields  # undecodable bytes: no header
    return names, len(names)


def csv_layout(path: str, encoding: str) -> CsvLayout:
    files = list_csv_files(path)
    enc = python_encoding(encoding)
    delims = {delimiter_for(f) for f in files}
    if len(delims) > 1:
        raise InputError(f"folder {path} mixes .csv and .tsv files; keep one kind per input")
    delim = delims.pop()
    header, nfields = read_header(files[0], enc, delim)
    for f in files[1:]:
        other, _ = read_header(f, enc, delim)
        if other != header:
            raise InputError(f"CSV files {files[0]} and {f} do not share one header row; "
                             "read them as separate inputs")
    return CsvLayout(files, header, nfields, delim, enc)


def read_csv_frame(spark: SparkSession, layout: CsvLayout, keep_empty: list[int],
                   max_field_chars: int, select: list[int] | None = None) -> DataFrame:
    """The records of ``layout`` as ``_c<i>`` (strings) for each column position ``i`` in
    ``select`` (default: all), ``_cbs_row`` and ``_cbs_status``. Only the selected fields are
    handed on and checked for undecodable bytes."""
    assert layout.header is not None
    spark.dataSource.register(NotesCsvSource)
    n = len(layout.header)
    select = sorted(set(range(n) if select is None else select))
    return (
        spark.read.format(SOURCE_NAME)
        .schema(frame_schema(select))
        .option("files", json.dumps(layout.files))
        .option("columns", str(n))
        .option("select", json.dumps(select))
        .option("encoding", layout.encoding)
        .option("delimiter", layout.delimiter)
        .option("keep_empty", json.dumps(sorted(keep_empty)))
        .option("max_field_chars", str(min(max(max_field_chars, 1 << 20), _MAX_FIELD)))
        .load()
    )


def frame_schema(select: list[int]) -> T.StructType:
    return T.StructType(
        [T.StructField(column_name(i), T.StringType()) for i in select]
        + [T.StructField(ROW_COLUMN, T.LongType()), T.StructField(STATUS_COLUMN, T.StringType())]
    )


# --------------------------------------------------------------------------------------------
# Executor side: the data source


class NotesCsvSource(DataSource):
    """``spark.read.format("cbs_notes_csv")``: see the module doc. Options are set by
    :func:`read_csv_frame`; the schema is always given by the caller."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> T.StructType:
        return frame_schema(self._select())

    def _select(self) -> list[int]:
        if "select" in self.options:
            return json.loads(self.options["select"])
        return list(range(int(self.options["columns"])))

    def reader(self, schema: T.StructType) -> DataSourceReader:
        return _NotesCsvReader(self.options)


class _NotesCsvReader(DataSourceReader):
    def __init__(self, options) -> None:
        self.files = json.loads(options["files"])
        self.columns = int(options["columns"])
        self.select = json.loads(options["select"]) if "select" in options else list(
            range(self.columns))
        self.encoding = options.get("encoding", "utf-8")
        self.delimiter = options.get("delimiter", ",")
        self.keep_empty = json.loads(options.get("keep_empty", "[]"))
        self.max_field = int(options.get("max_field_chars", str(_MAX_FIELD)))

    def partitions(self):
        return [InputPartition((i, f)) for i, f in enumerate(self.files)]

    def read(self, partition):
        index, path = partition.value
        yield from read_batches(path, index, self.columns, self.encoding, self.delimiter,
                                self.keep_empty, self.max_field, self.select)


def quoted_fields(raw: str, delimiter: str) -> list[bool]:
    """Which fields of one raw CSV record began with a quote (Python csv's default dialect)."""
    flags: list[bool] = []
    i, n = 0, len(raw)
    while True:
        if i < n and raw[i] == '"':
            flags.append(True)
            i += 1
            while True:
                j = raw.find('"', i)
                if j < 0:
                    return flags
                if j + 1 < n and raw[j + 1] == '"':
                    i = j + 2
                    continue
                i = j + 1
                break
        else:
            flags.append(False)
        while i < n and raw[i] not in (delimiter, "\r", "\n"):
            i += 1
        if i >= n or raw[i] != delimiter:
            return flags
        i += 1


def _fix(v: str) -> str:
    """A field decoded with surrogateescape, with its undecodable bytes as U+FFFD."""
    return v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_batches(path: str, file_index: int, ncols: int, encoding: str, delimiter: str,
                 keep_empty: list[int], max_field: int,
                 select: list[int] | None = None) -> Iterator:
    """Arrow record batches of one file: the ``select`` columns, ``_cbs_row``, ``_cbs_status``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    csv.field_size_limit(max_field)
    select = list(range(ncols)) if select is None else [j for j in select if j < ncols]
    keep = [j for j in keep_empty if j in select]
    base = file_index * FILE_ROW_STRIDE
    names = [column_name(j) for j in select] + [ROW_COLUMN, STATUS_COLUMN]
    null = pa.scalar(None, pa.string())

    def batch(rows: list[list], ids: list[int], status: list) -> "pa.RecordBatch":
        arrays = []
        for j in select:
            col = [r[j] for r in rows]
            try:
                arr = pa.array(col, pa.string())
            except Exception:  # noqa: BLE001 - lone surrogates: undecodable bytes somewhere
                for k, v in enumerate(col):
                    if v and not v.isascii():
                        try:
                            v.encode("utf-8")
                        except UnicodeEncodeError:
                            col[k] = _fix(v)
                            status[k] = status[k] or "invalid_utf8"
                arr = pa.array(col, pa.string())
            if j not in keep:
                arr = pc.if_else(pc.equal(arr, ""), null, arr)
            arrays.append(arr)
        arrays.append(pa.array([base + i for i in ids], pa.int64()))
        arrays.append(pa.array(status, pa.string()))
        return pa.RecordBatch.from_arrays(arrays, names=names)

    with open_text(path, encoding) as f:
        if keep:
            src, shadow = itertools.tee(f)
        else:
            src, shadow = f, None
        reader = csv.reader(src, delimiter=delimiter)
        try:
            next(reader)  # the header row
        except StopIteration:
            return
        except csv.Error:
            raise RuntimeError(f"CSV file {path}: the header row cannot be parsed") from None
        if shadow is not None:
            deque(itertools.islice(shadow, reader.line_num), maxlen=0)
        lines_done = reader.line_num
        rows: list[list] = []
        ids: list[int] = []
        status: list = []
        size = 0
        index = -1
        while True:
            index += 1
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error:
                # Only a field over the size limit gets here (the default dialect is lenient).
                raise RuntimeError(
                    f"CSV file {path}: record {index} has a field longer than {max_field} "
                    "characters (an unbalanced quote?); fix the file or raise "
                    "input.max_note_chars") from None
            raw_lines = reader.line_num - lines_done
            lines_done = reader.line_num
            if len(rec) != ncols:
                if shadow is not None:
                    deque(itertools.islice(shadow, raw_lines), maxlen=0)
                if not rec:
                    continue  # a blank line is no record
                rec = (rec + [None] * ncols)[:ncols]
                rows.append(rec)
                status.append("malformed_record")
                size += sum(len(v) for v in rec if v)
            else:
                if shadow is not None:
                    lines = itertools.islice(shadow, raw_lines)
                    if any(rec[j] == "" for j in keep):
                        flags = quoted_fields("".join(lines), delimiter)
                        for j in keep:
                            if rec[j] == "" and not (j < len(flags) and flags[j]):
                                rec[j] = None
                    else:
                        deque(lines, maxlen=0)
                rows.append(rec)
                status.append(None)
                size += sum(map(len, rec)) if None not in rec else sum(
                    len(v) for v in rec if v)
            ids.append(index)
            if len(rows) >= _BATCH_ROWS or size >= _BATCH_CHARS:
                yield batch(rows, ids, status)
                rows, ids, status, size = [], [], [], 0
        if rows:
            yield batch(rows, ids, status)
