"""Table state: what "current" means, and how a run changes it without ever showing a reader
two rows for one key.

Every table under an output root holds **only current rows**, exactly one per key
(:mod:`clinicalbert_spark.schemas` names each table's key). A row is current when the lineage
it carries (``note_hash``, the sentence span, and the ``fingerprint`` of the settings that
made it) equals what the run would produce now. A stage therefore works as a diff:

1. read the table and the stage's source,
2. mark the rows that are no longer current (note changed, deleted, rejected, settings
   changed, full refresh) and the keys that have no current row,
3. compute rows for those keys only,
4. commit "remove these keys, add these rows" as one unit (:meth:`TableStore.commit`).

Commits. Tables are partitioned by ``run_id`` (the run that wrote the row). A commit rewrites
the partitions that lose rows plus the run's own partition:

* Parquet: the new partitions are written under ``<table>/_staging/<commit>/`` (readers skip
  names starting with ``_``), a journal is written to ``<root>/_state/journal/``, then each
  partition folder is swapped in with two renames. A crash before the journal leaves only
  staging, which the next run deletes; a crash after it is rolled forward by the next run.
  Every partition is at all times either its old or its new self; a reader that lists the
  table during the millisecond swaps of a multi-partition commit can see some partitions
  old and others new (Delta readers never do).
* Delta: Spark writes the data files, then one Delta transaction removes the affected
  partitions' files and adds the new ones (delta-rs on local paths; Spark's own Delta writer
  when the session has the ``io.delta`` jars). Readers see the old or the new version.
* The ``runs`` table's one row per commit is written with pyarrow instead of Spark (no Spark
  job), committed the same two ways.

One run at a time per output root: :class:`RootLock` (``<root>/_state/lock``) holds the
owner's run id, host and pid; a second run waits ``run.lock_wait_s`` and then refuses
(exit 75). A lock whose owner died (same host, pid gone) or stopped refreshing it for
``run.lock_stale_s`` is taken over, and the crashed run's leftovers are repaired first.

The state model in full is in docs/tables.md ("State model").
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .errors import ConfigError, LockedError, OutputError
from .schemas import PARTITION_COLUMN, TABLES, TableSpec

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Run ids

_RUN_ID_ALPHABET = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def sanitise_run_id(run_id: str) -> str:
    """The run id as stored (partition folder names, SQL literals): letters, digits, ``-_.``.

    Other characters become ``_``. Two different ids that sanitise alike collide; the
    pipeline refuses the second (see :meth:`TableStore.check_run_id`).
    """
    if not isinstance(run_id, str):
        raise ConfigError("run id must be text")
    safe = "".join(c if c in _RUN_ID_ALPHABET else "_" for c in run_id.strip())
    if not safe.strip("_."):
        raise ConfigError("run id has no letters or digits")
    if len(safe) > 128:
        raise ConfigError("run id is longer than 128 characters")
    return safe


# --------------------------------------------------------------------------------------------
# Fingerprints


def fingerprint(kind: str, settings: dict) -> str:
    """A short stable hash of the settings that produce a table's values."""
    blob = json.dumps({"kind": kind, **settings}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Fault injection (tests only): CBS_INJECT_CRASH=<point>[,<point>...] stops the run at a point
# as if killed; CBS_INJECT_PAUSE=<point>=<seconds> sleeps there (holding the lock).


class SimulatedCrash(BaseException):
    """Raised at an injected crash point. A BaseException so that no cleanup code catches it:
    the run stops as if killed (lock, journal and staging left behind)."""


def crash_point(name: str) -> None:
    for item in os.environ.get("CBS_INJECT_PAUSE", "").split(","):
        point, _, secs = item.rpartition("=")
        if point == name:
            time.sleep(float(secs))
    spec = os.environ.get("CBS_INJECT_CRASH", "")
    if name in [s.strip() for s in spec.split(",") if s.strip()]:
        raise SimulatedCrash(name)


# --------------------------------------------------------------------------------------------
# Paths


def _is_local(path: str) -> bool:
    scheme = urlparse(path).scheme
    return scheme in ("", "file") or len(scheme) == 1  # "C:" on Windows


def local_path(path: str) -> Path:
    if not _is_local(path):
        raise OutputError(
            f"output {path}: only local or mounted file systems are supported as output "
            "roots in this version (Parquet commits need atomic folder renames)")
    return Path(urlparse(path).path if path.startswith("file:") else path)


def _rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# The lock

_LIVE_TOKENS: set[str] = set()  # locks this process holds (an in-process crash drops its own)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # unknown: keep what it owns
    return True


class RootLock:
    """One writer per output root: ``<root>/_state/lock`` (created with O_EXCL)."""

    def __init__(self, root: Path, run_id: str, stages: str, stale_s: float = 600.0):
        self.path = root / "_state" / "lock"
        self.stale_s = stale_s
        self.token = uuid.uuid4().hex
        self.owner = {"run_id": run_id, "stages": stages, "host": socket.gethostname(),
                      "pid": os.getpid(), "token": self.token,
                      "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self.taken_over: dict | None = None  # the crashed owner whose lock we took
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written by a crashed owner: judged by age

    def _is_stale(self, owner: dict) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            if owner["pid"] == os.getpid():
                return owner.get("token") not in _LIVE_TOKENS
            if not pid_alive(owner["pid"]):
                return True
        return age > self.stale_s

    def acquire(self, wait_s: float = 0.0) -> None:
        deadline = time.monotonic() + wait_s
        announced = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._read()
                if owner is None:
                    continue  # released in between
                if self._is_stale(owner):
                    grave = self.path.with_name(f"lock.stale-{uuid.uuid4().hex[:8]}")
                    try:
                        os.rename(self.path, grave)
                    except FileNotFoundError:
                        continue  # another waiter took it over first
                    grave.unlink(missing_ok=True)
                    self.taken_over = owner or {}
                    log.warning("output root lock of run %s (pid %s on %s) is stale: taken over",
                                owner.get("run_id"), owner.get("pid"), owner.get("host"))
                    continue
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"another run (run id {owner.get('run_id')}, stages "
                        f"{owner.get('stages')}, pid {owner.get('pid')} on {owner.get('host')}, "
                        f"since {owner.get('since')}) is writing to "
                        f"{self.path.parent.parent}; try again later, or wait for it with "
                        "--run.lock_wait_s SECONDS") from None
                if not announced:
                    log.info("waiting up to %.0f s for run %s to release the output root",
                             wait_s, owner.get("run_id"))
                    announced = True
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
                continue
            except PermissionError:
                raise OutputError(f"cannot write to output root {self.path.parent.parent} "
                                  "(permission denied)") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.owner, f)
            _LIVE_TOKENS.add(self.token)
            self._thread = threading.Thread(target=self._beat, name="cbs-lock", daemon=True)
            self._thread.start()
            return

    def _beat(self) -> None:
        every = max(0.5, min(30.0, self.stale_s / 4))
        while not self._stop.wait(every):
            owner = self._read()
            if not owner or owner.get("token") != self.token:
                self.lost = True
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self.lost = True
                return

    def check(self) -> None:
        """Raise before a commit if another run has taken the lock over (we were too slow)."""
        owner = self._read()
        if self.lost or not owner or owner.get("token") != self.token:
            raise LockedError(f"lost the lock on {self.path.parent.parent} (another run took "
                              "it over as stale); nothing more was committed")

    def release(self) -> None:
        self._stop.set()
        _LIVE_TOKENS.discard(self.token)
        owner = self._read()
        if owner and owner.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def abandon(self) -> None:
        """An injected crash: stop refreshing, leave the file (as a killed process would)."""
        self._stop.set()
        _LIVE_TOKENS.discard(self.token)


# --------------------------------------------------------------------------------------------
# The store


@dataclass
class CommitResult:
    added: int
    removed: int
    partitions: int


def _null_safe_join(left: DataFrame, right: DataFrame, cols: list[str], how: str) -> DataFrame:
    r = right.select(*[F.col(c).alias(f"_k_{c}") for c in cols]).distinct()
    cond = None
    for c in cols:
        term = left[c].eqNullSafe(r[f"_k_{c}"])
        cond = term if cond is None else cond & term
    out = left.join(r, cond, how)
    return out if how in ("left_anti", "left_semi") else out.drop(*[f"_k_{c}" for c in cols])


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """``df`` with exactly ``schema``'s columns in order: absent ones null, others cast only
    where the type differs (array element nullability aside: Spark will not cast that)."""
    have = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    cols = []
    for f in schema.fields:
        if f.name not in have:
            cols.append(F.lit(None).cast(f.dataType).alias(f.name))
        elif have[f.name] != f.dataType.simpleString():
            cols.append(F.col(f.name).cast(f.dataType).alias(f.name))
        else:
            cols.append(F.col(f.name))
    return df.select(*cols)


class TableStore:
    """The tables under one output root, in one format, for one run."""

    def __init__(self, spark: SparkSession, root: str, fmt: str, run_id: str):
        if fmt not in ("parquet", "delta"):
            raise ConfigError(f"unknown output format {fmt!r} (parquet, delta)")
        self.spark = spark
        self.root_str = root.rstrip("/")
        self.root = local_path(self.root_str)
        self.fmt = fmt
        self.run_id = run_id
        self.lock: RootLock | None = None

    # ------------------------------------------------------------------ paths and checks
    def path(self, table: str) -> Path:
        return self.root / table

    @property
    def state_dir(self) -> Path:
        return self.root / "_state"

    def prepare_root(self) -> None:
        """Create the root (or fail in one line when it cannot hold tables)."""
        if self.root.exists() and not self.root.is_dir():
            raise OutputError(f"output root {self.root} is a file, not a folder")
        try:
            (self.state_dir / "journal").mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise OutputError(f"cannot create folders under output root {self.root} "
                              "(permission denied)") from None
        except OSError as e:
            raise OutputError(f"cannot use output root {self.root} ({e.strerror})") from None
        if not os.access(self.state_dir, os.W_OK) or not os.access(self.root, os.W_OK):
            raise OutputError(f"cannot write to output root {self.root} (permission denied)")
        for name in TABLES:
            p = self.path(name)
            if p.exists() and not p.is_dir():
                raise OutputError(f"{p} is a file; the output root must hold only tables")

    def acquire(self, stages: str, wait_s: float, stale_s: float,
                on_locked: Callable[[], object] | None = None) -> RootLock:
        """Take the root's lock, then (``on_locked``: e.g. start Spark) repair what a crashed
        run left. The lock is a local-file operation: a refused run never needs Spark."""
        self.prepare_root()
        self.lock = RootLock(self.root, self.run_id, stages, stale_s)
        self.lock.acquire(wait_s)
        try:
            if on_locked is not None:
                on_locked()
            self.recover()
        except BaseException:
            self.lock.release()
            raise
        return self.lock

    def commit_run(self, row: dict) -> None:
        """Add this run's row to ``runs`` (:data:`~clinicalbert_spark.schemas.RUNS`),
        replacing the row of the same ``(run_id, stages)``.

        One small row, so no Spark job: the run's partition is read and rewritten with
        pyarrow and committed like any other (journal and swap; delta-rs). Spark's own Delta
        writer, when the session has it, commits it as a frame."""
        from .io import spark_has_delta
        from .schemas import RUNS, SPECS

        spec = SPECS["runs"]
        if self.fmt == "delta" and spark_has_delta(self.spark):
            df = self.spark.createDataFrame([row], RUNS).drop("run_id")
            saved, self.run_id = self.run_id, row["run_id"]
            try:
                self.commit(spec, df,
                            df.select("stages").withColumn("run_id", F.lit(row["run_id"])))
            finally:
                self.run_id = saved
            return
        if self.lock is not None:
            self.lock.check()
        run_id = row["run_id"]
        rows = self.run_rows(run_id)
        kept = [r for r in rows if r.get("stages") != row.get("stages")]
        staged = PartitionRows(run_id, _arrow_rows(spec, kept + [row]))
        existed = self.exists(spec.name)
        if self.fmt == "parquet":
            self._commit_parquet(spec, staged, [run_id], False, existed)
        else:
            self._commit_delta_rs(spec, staged, [run_id], False, not existed)
        log.info("table %s: +1 rows, -%d rows (1 partition(s) rewritten)", spec.name,
                 len(rows) - len(kept))

    def run_rows(self, run_id: str) -> list[dict]:
        """The ``runs`` rows of one run id, read without Spark (a few rows)."""
        import pyarrow.parquet as pq

        from .schemas import SPECS

        spec = SPECS["runs"]
        if not self.exists(spec.name):
            return []
        table = self.path(spec.name)
        if self.fmt == "delta":
            from deltalake import DeltaTable

            parts = [DeltaTable(str(table)).to_pyarrow_table(
                partitions=[(PARTITION_COLUMN, "=", run_id)])]
        else:
            folder = table / f"{PARTITION_COLUMN}={run_id}"
            files = sorted(f for f in folder.glob("*.parquet")
                           if not f.name.startswith((".", "_"))) if folder.is_dir() else []
            parts = [pq.read_table(f) for f in files]
        out = []
        for t in parts:
            out.extend(_arrow_conform(t, spec).to_pylist())
        for r in out:
            r[PARTITION_COLUMN] = run_id
        return out

    # ------------------------------------------------------------------ reading
    def exists(self, table: str) -> bool:
        p = self.path(table)
        if self.fmt == "delta":
            return (p / "_delta_log").is_dir()
        return p.is_dir()

    def read(self, spec: TableSpec) -> DataFrame:
        """The table's rows (every row is current); an empty frame when it has none."""
        schema = spec.stored_schema
        p = self.path(spec.name)
        if not self.exists(spec.name):
            return self.spark.createDataFrame([], schema)
        if self.fmt == "parquet":
            return self.spark.read.schema(schema).parquet(str(p))
        from .io import read_table

        # Columns added in a later schema version read as null (-> not current -> recomputed).
        return conform(read_table(self.spark, str(p), "delta"), schema)

    # ------------------------------------------------------------------ committing
    def commit(self, spec: TableSpec, add: DataFrame | None, remove: DataFrame | None = None,
               *, replace_all: bool = False, added: int | None = None) -> CommitResult:
        """Remove the rows whose key is in ``remove`` (or every row, ``replace_all``) and add
        ``add`` (stamped with this run id), as one unit. ``add`` must be materialised (persisted
        and counted) by the caller when it reads this table: its source files may be swapped.
        ``added``: ``add``'s row count where the caller has it (saves a Spark job)."""
        if self.lock is not None:
            self.lock.check()
        key = spec.key
        existing = self.read(spec) if self.exists(spec.name) else None
        cols = [f.name for f in spec.stored_schema.fields]
        new = None
        if add is None:
            added = 0
        else:
            new = conform(add.withColumn(PARTITION_COLUMN, F.lit(self.run_id)),
                          spec.stored_schema)
            if added is None:
                added = new.count()
            if added == 0 and existing is not None:
                new = None  # nothing to add: touch no partition for it
        if existing is None:
            affected: list[str] = []
            staged = new
            removed = 0
        else:
            stale = existing if replace_all else None if remove is None else \
                _null_safe_join(existing, remove.select(*key), key, "left_semi")
            by_part = {} if stale is None else \
                {r[0]: r[1] for r in stale.groupBy(PARTITION_COLUMN).count().collect()}
            removed = sum(by_part.values())
            affected = sorted(set(by_part) | ({self.run_id} if new is not None else set()))
            kept = existing.where(F.col(PARTITION_COLUMN).isin(affected)) if affected else None
            if kept is not None and by_part:
                kept = _null_safe_join(kept, stale.select(*key), key, "left_anti")
            staged = kept if new is None else (new if kept is None else kept.unionByName(new))
        if (existing is None and new is None) or (
                existing is not None and not affected and not replace_all):
            return CommitResult(0, 0, 0)
        if self.fmt == "parquet":
            self._commit_parquet(spec, staged, affected, replace_all, existing is not None)
        else:
            self._commit_delta(spec, staged, affected, replace_all, existing is None)
        log.info("table %s: +%d rows, -%d rows (%d partition(s) rewritten)", spec.name, added,
                 removed, len(affected))
        return CommitResult(added, removed, len(affected))

    def _commit_parquet(self, spec, staged, affected, replace_all, existed) -> None:
        table = self.path(spec.name)
        cid = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        stage_dir = table / "_staging" / cid
        if staged is not None:
            _write_staged(staged, stage_dir)
        if replace_all and existed:
            affected = sorted({p.name.split("=", 1)[1] for p in table.iterdir()
                               if p.is_dir() and p.name.startswith(PARTITION_COLUMN + "=")}
                              | set(affected))
        new_parts = sorted(p.name for p in stage_dir.iterdir() if p.is_dir()) \
            if stage_dir.is_dir() else []
        parts = sorted(set(new_parts) | {f"{PARTITION_COLUMN}={v}" for v in affected})
        journal = {"table": spec.name, "cid": cid, "format": "parquet",
                   "swaps": [{"partition": p, "staged": p in new_parts} for p in parts]}
        crash_point(f"commit:{spec.name}:before_journal")
        jpath = self.state_dir / "journal" / f"{spec.name}-{cid}.json"
        table.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(jpath, journal)
        self._apply_parquet_journal(journal, crash_mid=True)
        jpath.unlink(missing_ok=True)

    def _apply_parquet_journal(self, journal: dict, crash_mid: bool = False) -> None:
        table = self.path(journal["table"])
        cid = journal["cid"]
        stage_dir, trash = table / "_staging" / cid, table / "_trash" / cid
        for i, sw in enumerate(journal["swaps"]):
            final, staged, old = table / sw["partition"], stage_dir / sw["partition"], \
                trash / sw["partition"]
            if sw["staged"]:
                if staged.exists():
                    if final.exists():
                        trash.mkdir(parents=True, exist_ok=True)
                        os.rename(final, old)
                    os.rename(staged, final)
            elif final.exists():
                trash.mkdir(parents=True, exist_ok=True)
                os.rename(final, old)
            if crash_mid and i == 0:
                crash_point(f"commit:{journal['table']}:mid_swap")
        _rmtree(trash)
        _rmtree(stage_dir)
        for d in (table / "_trash", table / "_staging"):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()

    def _commit_delta(self, spec, staged, affected, replace_all, creating) -> None:
        from .io import spark_has_delta

        table = self.path(spec.name)
        if spark_has_delta(self.spark):
            if staged is None:
                staged = self.spark.createDataFrame([], spec.stored_schema)
            w = _parquet_writer(staged, "delta").partitionBy(PARTITION_COLUMN).mode("overwrite")
            if not (replace_all or creating):
                if not affected:
                    w = _parquet_writer(staged, "delta").partitionBy(PARTITION_COLUMN).mode("append")
                else:
                    vals = ", ".join("'" + v.replace("'", "''") + "'" for v in affected)
                    w = w.option("replaceWhere", f"{PARTITION_COLUMN} IN ({vals})")
            # Columns a later schema version adds (2.2: the vector storage columns) join the
            # table's schema; Delta refuses the write otherwise.
            w.option("mergeSchema", "true").save(str(table))
            return
        self._commit_delta_rs(spec, staged, affected, replace_all, creating)

    def _commit_delta_rs(self, spec, staged, affected, replace_all, creating) -> None:
        table = self.path(spec.name)
        cid = uuid.uuid4().hex[:12]
        rel_dir = f"data-{cid}"
        jpath = self.state_dir / "journal" / f"{spec.name}-{cid}.json"
        table.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(jpath, {"table": spec.name, "cid": cid, "format": "delta",
                                   "data_dir": rel_dir})
        if staged is not None:
            _write_staged(staged, table / rel_dir)
        crash_point(f"commit:{spec.name}:before_journal")
        mode = "overwrite" if (creating or replace_all or affected) else "append"
        delta_rs_commit(table, rel_dir, spec.stored_schema, PARTITION_COLUMN, mode,
                        None if (creating or replace_all) else affected)
        jpath.unlink(missing_ok=True)

    # ------------------------------------------------------------------ recovery
    def recover(self) -> None:
        """Repair what a crashed run left: roll committed Parquet journals forward, drop
        uncommitted staging and orphan Delta data folders."""
        jdir = self.state_dir / "journal"
        journals = sorted(jdir.glob("*.json")) if jdir.is_dir() else []
        pending: set[tuple[str, str]] = set()
        for j in journals:
            try:
                journal = json.loads(j.read_text(encoding="utf-8"))
            except ValueError:
                j.unlink(missing_ok=True)
                continue
            if journal.get("format") == "parquet":
                self._apply_parquet_journal(journal)
                log.warning("table %s: finished commit %s of a crashed run", journal["table"],
                            journal["cid"])
            else:
                self._recover_delta(journal)
            pending.add((journal["table"], journal["cid"]))
            j.unlink(missing_ok=True)
        for name in TABLES:
            for sub in ("_staging", "_trash"):
                d = self.path(name) / sub
                if d.is_dir():
                    log.warning("table %s: removing %s left by a crashed run", name, sub)
                    _rmtree(d)

    def _recover_delta(self, journal: dict) -> None:
        from deltalake import DeltaTable

        table = self.path(journal["table"])
        data = table / journal["data_dir"]
        if not data.is_dir():
            return
        committed = False
        if DeltaTable.is_deltatable(str(table)):
            files = DeltaTable(str(table)).file_uris()
            committed = any(f"/{journal['data_dir']}/" in u for u in files)
        if not committed:
            log.warning("table %s: removing data files of an uncommitted write of a crashed "
                        "run", journal["table"])
            _rmtree(data)


def delta_rs_commit(table: Path, data_rel: str, schema: T.StructType, partition_by: str | None,
                    mode: str, replace: list[str] | None = None) -> None:
    """Commit the Parquet files Spark wrote under ``table/data_rel`` to the Delta log in one
    transaction (delta-rs): create the table, append, overwrite it, or with ``replace``
    overwrite just those partition values. No data passes through the driver."""
    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake import Schema as DeltaSchema
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction, create_table_with_add_actions
    from pyspark.sql.pandas.types import to_arrow_schema
    from urllib.parse import unquote

    actions = []
    for f in sorted((table / data_rel).rglob("*.parquet")):
        pvals: dict[str, str | None] = {}
        if partition_by:
            raw = f.parent.name.split("=", 1)[1]
            pvals[partition_by] = None if raw == "__HIVE_DEFAULT_PARTITION__" else unquote(raw)
        st = f.stat()
        actions.append(AddAction(f.relative_to(table).as_posix(), st.st_size, pvals,
                                 int(st.st_mtime * 1000), True,
                                 json.dumps({"numRecords": _parquet_rows(f)})))
    data = [f for f in schema.fields if f.name != partition_by]
    part = [f for f in schema.fields if f.name == partition_by]
    dschema = DeltaSchema.from_arrow(pa.schema(
        to_arrow_schema(T.StructType(data + part), timezone="UTC")))
    parts = [partition_by] if partition_by else None
    for attempt in range(5):
        try:
            if not DeltaTable.is_deltatable(str(table)):
                create_table_with_add_actions(str(table), dschema, actions, mode="overwrite",
                                              partition_by=parts)
            elif replace:
                DeltaTable(str(table)).create_write_transaction(
                    actions, mode="overwrite", schema=dschema, partition_by=parts,
                    partition_filters=[(partition_by, "in", replace)])
            else:
                DeltaTable(str(table)).create_write_transaction(
                    actions, mode=mode, schema=dschema, partition_by=parts)
            return
        except CommitFailedError:  # a reader-side race (e.g. a checkpoint); the lock excludes writers
            if attempt == 4:
                raise
            log.warning("Delta commit to %s raced another commit; retrying", table)


def root_format(root: str) -> str:
    """``delta`` when the tables under an output root are Delta tables, else ``parquet``."""
    base = local_path(root.rstrip("/"))
    return "delta" if any((base / t / "_delta_log").is_dir() for t in TABLES) else "parquet"


def write_run_row(spark: SparkSession, root: str, fmt: str, row: dict,
                  wait_s: float = 0.0, stale_s: float = 600.0) -> None:
    """Add one row (:data:`~clinicalbert_spark.schemas.RUNS`) to the ``runs`` table under
    ``root``, replacing the row of the same ``(run_id, stages)``, holding the root's lock
    (``wait_s``: how long to wait for a run that holds it). For jobs that write no other table
    under the root (training); the pipeline writes its own rows as it runs."""
    store = TableStore(spark, root, fmt, row["run_id"])
    lock = store.acquire(row["stages"], wait_s, stale_s)
    try:
        store.commit_run(row)
    finally:
        lock.release()


def write_table(df: DataFrame, path: str, fmt: str = "parquet", mode: str = "overwrite") -> None:
    """A single-stage job's output: one unpartitioned table at ``path``.

    ``overwrite`` replaces it so that a reader sees the old table or the new one (Parquet: the
    new files are written to a hidden sibling folder, then two renames; Delta: one
    transaction); ``append`` adds files; ``error`` refuses an existing table.
    """
    if fmt not in ("parquet", "delta"):
        raise ConfigError(f"unknown output format {fmt!r} (parquet, delta)")
    target = local_path(path.rstrip("/"))
    exists = target.exists() and (not target.is_dir() or any(target.iterdir()))
    if target.exists() and not target.is_dir():
        raise OutputError(f"output {target} is a file, not a folder")
    if mode == "error" and exists:
        raise OutputError(f"output {target} exists (output.mode error)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise OutputError(f"cannot create {target.parent} (permission denied)") from None
    if not os.access(target.parent, os.W_OK):
        raise OutputError(f"cannot write to {target.parent} (permission denied)")
    cid = uuid.uuid4().hex[:12]
    if fmt == "delta":
        from .io import spark_has_delta

        if spark_has_delta(df.sparkSession):
            _parquet_writer(df, "delta").mode(mode if mode != "error" else "overwrite").save(str(target))
            return
        target.mkdir(exist_ok=True)
        rel = f"data-{cid}"
        _parquet_writer(df).mode("overwrite").parquet(str(target / rel))
        delta_rs_commit(target, rel, df.schema, None, "append" if mode == "append" else "overwrite")
        return
    staging = target.parent / f".{target.name}.staging-{cid}"
    _parquet_writer(df).mode("overwrite").parquet(str(staging))
    if mode == "append" and exists:
        for f in staging.glob("*.parquet"):
            os.rename(f, target / f"{cid}-{f.name}")
        _rmtree(staging)
        return
    old = target.parent / f".{target.name}.old-{cid}"
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    _rmtree(old)


@dataclass
class PartitionRows:
    """A few rows of one partition, in memory (the ``runs`` table's rows of one run)."""
    value: str
    table: "object"  # pyarrow.Table of the spec's columns without the partition column


def _write_staged(staged: "DataFrame | PartitionRows", folder: Path) -> None:
    """Write a commit's rows under ``folder``, one ``run_id=...`` sub-folder per partition."""
    if not isinstance(staged, PartitionRows):  # a Spark frame (classic or Connect)
        _parquet_writer(staged).partitionBy(PARTITION_COLUMN).mode("overwrite").parquet(str(folder))
        return
    import pyarrow.parquet as pq

    part = folder / f"{PARTITION_COLUMN}={staged.value}"  # run ids need no escaping
    part.mkdir(parents=True, exist_ok=True)
    pq.write_table(staged.table, part / f"part-00000-{uuid.uuid4().hex}.c000.zstd.parquet",
                   compression="zstd")


def _arrow_schema(spec: TableSpec):
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(T.StructType([f for f in spec.stored_schema.fields
                                         if f.name != PARTITION_COLUMN]), timezone="UTC")


def _arrow_conform(t, spec: TableSpec):
    """``t`` with the spec's columns (no partition column): absent ones null, others cast;
    files of an older schema version lack the newer columns."""
    import pyarrow as pa

    schema = _arrow_schema(spec)
    cols = [t.column(f.name).cast(f.type) if f.name in t.column_names
            else pa.nulls(t.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _arrow_rows(spec: TableSpec, rows: list[dict]):
    import pyarrow as pa

    schema = _arrow_schema(spec)
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows],
                                schema=schema)


def _parquet_writer(df: DataFrame, fmt: str = "parquet"):
    """``df.write`` as every table is written: zstd Parquet files; free text is stored
    without a dictionary (its values hardly repeat: building one hashed every sentence
    for nothing, ~15% of the segment job's JVM time)."""
    w = df.write.format(fmt)
    if fmt == "parquet":
        w = w.option("compression", "zstd")
    if "text" in df.columns:
        w = w.option("parquet.enable.dictionary#text", "false")
    return w


def _parquet_rows(f: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(f).metadata.num_rows


def rows_not_in(df: DataFrame, other: DataFrame, cols: Iterable[str]) -> DataFrame:
    """Rows of ``df`` whose ``cols`` (null-safe) have no match in ``other``."""
    return _null_safe_join(df, other, list(cols), "left_anti")


def rows_in(df: DataFrame, other: DataFrame, cols: Iterable[str]) -> DataFrame:
    return _null_safe_join(df, other, list(cols), "left_semi")
