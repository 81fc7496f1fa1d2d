"""Building the SparkSession every job uses, and its private scratch space.

Spark spills, shuffles and caches rows (note text, PHI) under ``spark.local.dir`` and the JVM's
and Python workers' temp folders. A job killed with ``kill -9`` never deletes them. So every
process that starts the JVM itself gets its own folder ``<host>-<pid>-<random>`` (mode 0700)
inside a private scratch root (0700; ``spark.scratch_dir``, else ``$CBS_SCRATCH_DIR``, else
``<system temp>/clinicalbert-spark-<uid>``) and points all three there. The folder is deleted
at normal exit; folders of this host whose process is gone are deleted by the next start.
"""
from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path

from pyspark.sql import SparkSession

from ..config import SparkConfig
from ..errors import OutputError
from ..logs import debug_enabled
from ..state import pid_alive

log = logging.getLogger(__name__)

SCRATCH_ENV = "CBS_SCRATCH_DIR"

# Settings every job needs, whatever the cluster; conf/spark-*.conf tune the rest.
BASE_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Readers of the tables (DuckDB, Trino, delta-rs) want plain microsecond timestamps.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.session.timeZone": "UTC",
    # A re-run replaces only its own run_id partition of a Parquet table.
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    # The model is cached per Python worker: reuse workers across tasks.
    "spark.python.worker.reuse": "true",
    "spark.ui.showConsoleProgress": "false",
    # Let adaptive execution shrink the 200 default shuffle partitions, cached plans included
    # (the pipeline persists its intermediate frames).
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.adaptive.coalescePartitions.enabled": "true",
    "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
}

# The JVM's console log when this process starts it: one line per event. Spark's default
# layout appends every exception's multi-line Java trace, and "Lost task" warnings quote the
# failing task's error (which can quote data values); run_job prints the error as one line.
# CBS_DEBUG=1 (or CBS_LOG_LEVEL=DEBUG) keeps Spark's own logging, traces included.
QUIET_LOG4J2 = """\
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.alwaysWriteExceptions = false
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %replace{{%m}}{{[\\\\r\\\\n].*}}{{}}%n
logger.conf.name = org.apache.spark.SparkConf
logger.conf.filter.localdir.type = RegexFilter
logger.conf.filter.localdir.regex = .*spark.local.dir will be overridden.*
logger.conf.filter.localdir.onMatch = DENY
logger.conf.filter.localdir.onMismatch = NEUTRAL
logger.tsm.name = org.apache.spark.scheduler.TaskSetManager
logger.tsm.level = error
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
logger.jetty2.name = org.sparkproject.jetty.util.component.AbstractLifeCycle
logger.jetty2.level = error
logger.metastore.name = org.apache.hadoop.hive.metastore.RetryingHMSHandler
logger.metastore.level = fatal
logger.metastore2.name = org.apache.hadoop.hive.metastore.ObjectStore
logger.metastore2.level = error
logger.parquet.name = org.apache.parquet.CorruptStatistics
logger.parquet.level = error
logger.parquet2.name = parquet.CorruptStatistics
logger.parquet2.level = error
"""

_scratch: Path | None = None  # this process's folder, once made
_handed_out = 0  # get_spark calls in this process


def sessions_handed_out() -> int:
    """How many times get_spark was called in this process (run_job: did this job use Spark?)."""
    return _handed_out


def under_spark_submit() -> bool:
    """True inside spark-submit / pyspark shells: they start the JVM and hand us its port."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


# --------------------------------------------------------------------------------------------
# Scratch space


def scratch_root(cfg: SparkConfig) -> Path:
    """``spark.scratch_dir``, else ``$CBS_SCRATCH_DIR``, else ``<temp>/clinicalbert-spark-<uid>``."""
    if cfg.scratch_dir:
        return Path(cfg.scratch_dir).expanduser().absolute()
    if os.environ.get(SCRATCH_ENV):
        return Path(os.environ[SCRATCH_ENV]).expanduser().absolute()
    return Path(tempfile.gettempdir()) / f"clinicalbert-spark-{os.getuid()}"


def _host() -> str:
    name = socket.gethostname().split(".")[0] or "host"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def ensure_private_dir(path: Path) -> None:
    """Make ``path`` (0700) or check the one there: ours, a folder, no access for others."""
    uid = os.getuid()
    try:
        path.mkdir(mode=0o700, parents=True)
        os.chmod(path, 0o700)  # mkdir's mode is cut by the umask, never widened; be exact
        return
    except FileExistsError:
        pass
    except OSError as e:
        raise OutputError(f"cannot create scratch folder {path}: {e.strerror}") from None
    lst = os.lstat(path)
    if stat.S_ISLNK(lst.st_mode) and lst.st_uid != uid:
        raise OutputError(f"scratch folder {path} is a link owned by another user (uid "
                          f"{lst.st_uid}); set spark.scratch_dir or {SCRATCH_ENV}")
    try:
        st = os.stat(path)
    except OSError as e:  # a dangling link
        raise OutputError(f"scratch folder {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"scratch folder {path} is not a folder; set spark.scratch_dir "
                          f"or {SCRATCH_ENV}")
    if st.st_uid != uid:
        raise OutputError(f"scratch folder {path} is owned by another user (uid {st.st_uid}); "
                          f"set spark.scratch_dir or {SCRATCH_ENV}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        log.info("scratch folder %s was mode %o; made it 0700", path, stat.S_IMODE(st.st_mode))
        os.chmod(path, 0o700)


def _rmtree(path: Path) -> None:
    def retry_writable(func, p, _exc):  # a read-only folder inside: open it up and retry
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry_writable)


def remove_stale_scratch(root: Path) -> int:
    """Delete this host's per-process folders in ``root`` whose process is gone."""
    host, n = _host(), 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for entry in entries:
        parts = entry.name.rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(parts[1])
        if pid == os.getpid() or pid_alive(pid):
            continue
        _rmtree(Path(entry.path))
        n += 1
    return n


def _remove_own_scratch(path: Path) -> None:
    global _scratch
    try:  # stop the JVM first so that nothing writes into the folder being deleted
        from pyspark import SparkContext

        if SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()
    except Exception:  # noqa: BLE001 - exiting anyway
        pass
    _rmtree(path)
    if _scratch == path:
        _scratch = None


def make_scratch(cfg: SparkConfig) -> Path:
    """This process's private folder ``<root>/<host>-<pid>-<random>`` (0700), made once.

    Stale folders of dead processes on this host are deleted first; ours is deleted at exit.
    """
    global _scratch
    if _scratch is not None and _scratch.is_dir():
        return _scratch
    root = scratch_root(cfg)
    ensure_private_dir(root)
    stale = remove_stale_scratch(root)
    if stale:
        log.info("scratch: removed %d folder(s) left by killed runs in %s", stale, root)
    path = root / f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    atexit.register(_remove_own_scratch, path)
    _scratch = path
    return path


def _spark_default(key: str) -> str | None:
    """A value from spark-defaults.conf (``--conf`` given by us replaces, not extends, it)."""
    conf_dir = os.environ.get("SPARK_CONF_DIR")
    if not conf_dir and os.environ.get("SPARK_HOME"):
        conf_dir = os.path.join(os.environ["SPARK_HOME"], "conf")
    if not conf_dir:
        return None
    try:
        with open(os.path.join(conf_dir, "spark-defaults.conf"), encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(None, 1)
                if len(parts) == 2 and parts[0] == key:
                    return parts[1]
    except OSError:
        pass
    return None


def _has_user_log4j(java_opts: str) -> bool:
    if "log4j2.configurationFile" in java_opts or "log4j.configuration" in java_opts:
        return True
    conf_dir = os.environ.get("SPARK_CONF_DIR") or (
        os.path.join(os.environ["SPARK_HOME"], "conf") if os.environ.get("SPARK_HOME") else None)
    return bool(conf_dir) and any(
        os.path.isfile(os.path.join(conf_dir, n))
        for n in ("log4j2.properties", "log4j2.xml", "log4j2.yaml", "log4j2.json"))


def _java_opt(name: str, value: str) -> str:
    return f'-D{name}="{value}"' if any(c.isspace() for c in value) else f"-D{name}={value}"


def _scratch_conf(cfg: SparkConfig, conf: dict[str, str], local: bool) -> None:
    """Point spark.local.dir, java.io.tmpdir and TMPDIR at this process's private folder."""
    path = make_scratch(cfg)
    tempfile.gettempdir()  # pin this process's own temp folder before TMPDIR changes
    os.environ.setdefault(SCRATCH_ENV, str(path.parent))  # child jobs share the root
    if "spark.local.dir" in conf:
        log.info("spark.local.dir=%s from the configuration: Spark's spill files go there, "
                 "not to the private scratch folder", conf["spark.local.dir"])
    else:
        conf["spark.local.dir"] = str(path)
        if os.environ.get("SPARK_LOCAL_DIRS"):
            log.info("SPARK_LOCAL_DIRS is set: Spark uses it instead of the scratch folder")
    opts = conf.get("spark.driver.extraJavaOptions") or _spark_default(
        "spark.driver.extraJavaOptions") or ""
    extra = [_java_opt("java.io.tmpdir", str(path))]
    level = os.environ.get("CBS_SPARK_LOG_LEVEL", "WARN").lower()
    verbose = debug_enabled() or os.environ.get("CBS_LOG_LEVEL", "").upper() == "DEBUG"
    if not verbose and not _has_user_log4j(opts):
        props = path / "log4j2.properties"
        props.write_text(QUIET_LOG4J2.format(level=level), encoding="utf-8")
        extra.append(_java_opt("log4j2.configurationFile", props.as_uri()))
    conf["spark.driver.extraJavaOptions"] = " ".join(x for x in [opts.strip(), *extra] if x)
    # Python workers: local mode inherits this process's environment, clusters get executorEnv.
    os.environ["TMPDIR"] = str(path)
    if not local:
        conf.setdefault("spark.executorEnv.TMPDIR", str(path))
    log.info("scratch folder %s (private: spark.local.dir, java.io.tmpdir, TMPDIR)", path)


def local_driver_memory() -> str:
    """A quarter of this machine's memory, 2 to 8 GiB: the heap of a local-mode run (the
    driver runs the tasks) unless ``spark.driver.memory`` is given."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return f"{max(2, min(8, ram // 4 >> 30))}g"


def user_spark_settings() -> set[str]:
    """Spark settings the user gave a plain ``python`` launch outside our config: keys of
    ``spark-defaults.conf`` (``$SPARK_CONF_DIR``, else ``$SPARK_HOME/conf``, else pyspark's
    own), ``--conf``/``--driver-memory`` in ``PYSPARK_SUBMIT_ARGS``, ``SPARK_DRIVER_MEMORY``."""
    import re
    import shlex

    keys: set[str] = set()
    conf_dir = os.environ.get("SPARK_CONF_DIR")
    if not conf_dir:
        home = os.environ.get("SPARK_HOME")
        if not home:
            try:
                from pyspark.find_spark_home import _find_spark_home

                home = _find_spark_home()
            except Exception:  # noqa: BLE001 - no Spark home: no defaults file either
                home = None
        conf_dir = os.path.join(home, "conf") if home else None
    if conf_dir:
        try:
            with open(os.path.join(conf_dir, "spark-defaults.conf"), encoding="utf-8") as f:
                for line in f:  # Java properties: "key value", "key=value" or "key: value"
                    m = re.match(r"\s*([^\s=:#!][^\s=:]*)", line)
                    if m:
                        keys.add(m.group(1))
        except OSError:
            pass
    try:
        args = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    except ValueError:
        args = []
    for flag, value in zip(args, args[1:]):
        if flag == "--conf" and "=" in value:
            keys.add(value.split("=", 1)[0])
        elif flag == "--driver-memory":
            keys.add("spark.driver.memory")
    if os.environ.get("SPARK_DRIVER_MEMORY"):
        keys.add("spark.driver.memory")
    return keys


def local_mode_defaults() -> dict[str, str]:
    """What a plain ``python`` local-mode launch sets where the user set nothing (see
    :func:`user_spark_settings`; the pipeline config's ``spark.conf`` overrides both)."""
    defaults = {
        # a few shuffle partitions per core, not 200 tiny tasks
        "spark.sql.shuffle.partitions": str(4 * (os.cpu_count() or 2)),
        # Spark's 1 GiB default heap is too small for one task on a 128 MB input split
        # (persisted segmenter output held whole notes' sentences): a quarter of the RAM.
        "spark.driver.memory": local_driver_memory(),
    }
    user = user_spark_settings()
    return {k: v for k, v in defaults.items() if k not in user}


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Return the active SparkSession or build one from ``cfg``.

    Under spark-submit the master comes from spark-submit; run as plain ``python`` with no
    ``spark.master`` given, the job runs in local mode on every core.
    """
    from pyspark import SparkContext

    global _handed_out
    active = active_session()
    if active is not None:
        # A notebook's or platform's session: its settings are the user's (README "From a
        # notebook" lists what the pipeline wants); nothing is changed.
        _handed_out += 1
        log.info("using the active Spark session as it is")
        return active
    remote = cfg.remote or os.environ.get("SPARK_REMOTE")
    if remote:
        return _connect_session(cfg, remote)
    builder = SparkSession.builder.appName(cfg.app_name)
    if under_spark_submit():
        # spark-submit's --master (or spark-defaults) decides; spark.master from a config
        # file must not silently turn a cluster submit into a local run.
        if cfg.master:
            log.info("spark.master=%s ignored: spark-submit chose the master", cfg.master)
    else:
        builder = builder.master(cfg.master or "local[*]")
    conf = dict(BASE_CONF)
    local = (cfg.master or "local").startswith("local")
    if not under_spark_submit() and local:
        conf.update(local_mode_defaults())
    conf["spark.sql.execution.arrow.maxRecordsPerBatch"] = str(cfg.arrow_batch_size)
    conf.update(cfg.conf)
    if SparkContext._active_spark_context is None:
        if under_spark_submit():
            log.info("under spark-submit: spark.local.dir and java.io.tmpdir are the "
                     "submitter's (keep them private: they hold note text)")
        else:
            _scratch_conf(cfg, conf, local)
    for k, v in conf.items():
        builder = builder.config(k, v)
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    # Python workers must run the interpreter that has this package and torch installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    _handed_out += 1  # counted before the JVM starts: errors from here on may quote data
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("CBS_SPARK_LOG_LEVEL", "WARN"))
    for k, v in cfg.conf.items():  # a session that already existed still takes SQL confs
        try:
            spark.conf.set(k, v)
        except Exception:  # noqa: BLE001 - static confs of a running session cannot change
            pass
    ui = spark.sparkContext.uiWebUrl
    log.info("Spark %s, master %s, app %s%s", spark.version, spark.sparkContext.master,
             spark.sparkContext.applicationId, f", UI {ui}" if ui else "")
    return spark


def is_connect(spark) -> bool:
    """True for a Spark Connect session (no SparkContext, no JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def active_session() -> SparkSession | None:
    """The session this process already has (classic or Spark Connect), else None."""
    try:
        s = SparkSession.getActiveSession()
    except Exception:  # noqa: BLE001 - no JVM yet / connect-only environment
        s = None
    if s is None:
        try:
            from pyspark.sql.connect.session import SparkSession as RemoteSession

            s = RemoteSession.getActiveSession()
        except Exception:  # noqa: BLE001 - the connect extras are not installed
            s = None
    return s


def _connect_session(cfg: SparkConfig, remote: str) -> SparkSession:
    """A Spark Connect session to ``remote`` (sc://host:port), made by this job: it takes the
    job's SQL settings (the server's static settings are the server's)."""
    global _handed_out
    try:
        import pyspark.sql.connect.session  # noqa: F401 - needs pyspark[connect]
    except ImportError as e:
        from ..errors import ConfigError

        raise ConfigError(f"Spark Connect needs the pyspark[connect] extras ({e.name} is not "
                          "installed): pip install 'pyspark[connect]'") from None
    _handed_out += 1
    spark = SparkSession.builder.remote(remote).appName(cfg.app_name).getOrCreate()
    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_batch_size),
            **cfg.conf}
    for k, v in conf.items():
        try:
            spark.conf.set(k, v)
        except Exception:  # noqa: BLE001 - static settings belong to the server
            log.info("Spark Connect: %s is the server's setting and was left as it is", k)
    log.info("Spark %s over Spark Connect (%s)", spark.version, remote.split(";")[0])
    return spark
