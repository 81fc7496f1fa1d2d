"""Building the SparkSession every job uses."""
from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from ..config import SparkConfig

log = logging.getLogger(__name__)

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


def under_spark_submit() -> bool:
    """True inside spark-submit / pyspark shells: they start the JVM and hand us its port."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Return the active SparkSession or build one from ``cfg``.

    Under spark-submit the master comes from spark-submit; run as plain ``python`` with no
    ``spark.master`` given, the job runs in local mode on every core.
    """
    builder = SparkSession.builder.appName(cfg.app_name)
    if under_spark_submit():
        # spark-submit's --master (or spark-defaults) decides; spark.master from a config
        # file must not silently turn a cluster submit into a local run.
        if cfg.master:
            log.info("spark.master=%s ignored: spark-submit chose the master", cfg.master)
    else:
        builder = builder.master(cfg.master or "local[*]")
    conf = dict(BASE_CONF)
    if not under_spark_submit() and (cfg.master or "local").startswith("local"):
        # Local mode: a few shuffle partitions per core, not 200 tiny tasks.
        conf["spark.sql.shuffle.partitions"] = str(4 * (os.cpu_count() or 2))
    conf["spark.sql.execution.arrow.maxRecordsPerBatch"] = str(cfg.arrow_batch_size)
    conf.update(cfg.conf)
    for k, v in conf.items():
        builder = builder.config(k, v)
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    # Python workers must run the interpreter that has this package and torch installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
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
