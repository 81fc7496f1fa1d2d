"""Spark GPU scheduling reaches the encoder: a standalone worker advertises two GPUs through
conf/gpu-discovery.sh (with a stand-in nvidia-smi: these machines have no GPU), tasks ask for
one each, and every task reads the address Spark gave it through the same function the
encoder uses to pick its device.
"""
from __future__ import annotations

import json
import stat
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparkcluster import StandaloneCluster, build_pyfiles_zip, java_available  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.cluster

PROBE = textwrap.dedent("""
    import os, sys, time
    import pandas as pd
    from pyspark.sql import SparkSession

    out = sys.argv[1]
    spark = SparkSession.builder.appName("cbs-gpu-probe").getOrCreate()

    def probe(batches):
        from clinicalbert_spark.encode.device import (_physical_to_ordinal, resolve_device,
                                                      spark_gpu_address)
        for pdf in batches:
            t0 = time.time()
            time.sleep(1.5)  # hold the GPU so that tasks overlap
            addr = spark_gpu_address()
            yield pd.DataFrame({"part": [int(pdf["p"].iloc[0])], "address": [addr],
                                "ordinal": [_physical_to_ordinal(addr) if addr else -1],
                                "device": [str(resolve_device("auto"))],
                                "t0": [t0], "t1": [time.time()]})

    df = spark.range(0, 8, numPartitions=8).selectExpr("cast(id as int) as p")
    df.mapInPandas(probe, "part INT, address STRING, ordinal INT, device STRING, "
                          "t0 DOUBLE, t1 DOUBLE").toPandas().to_parquet(out)
    spark.stop()
""")


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    why = java_available()
    if why:
        pytest.skip(f"standalone cluster tests need Java: {why}")
    root = tmp_path_factory.mktemp("gpu_standalone")
    fake_smi = root / "nvidia-smi"
    fake_smi.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    fake_smi.chmod(fake_smi.stat().st_mode | stat.S_IEXEC)
    discovery = REPO / "conf" / "gpu-discovery.sh"
    opts = (f"-Dspark.worker.resource.gpu.amount=2 "
            f"-Dspark.worker.resource.gpu.discoveryScript={discovery}")
    c = StandaloneCluster(root, workers=1, worker_cores=2, worker_memory="2g",
                          extra_env={"SPARK_WORKER_OPTS": opts, "NVIDIA_SMI": str(fake_smi),
                                     "CUDA_VISIBLE_DEVICES": ""})
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_tasks_get_distinct_gpus_from_spark(gpu_cluster, tmp_path):
    app = tmp_path / "probe.py"
    app.write_text(PROBE)
    zipped = build_pyfiles_zip(REPO / "clinicalbert_spark", tmp_path / "cbs.zip")
    out = tmp_path / "probe.parquet"
    res = gpu_cluster.submit([app, out], py_files=[zipped], conf={
        "spark.executor.cores": "2", "spark.executor.memory": "1g",
        "spark.executor.resource.gpu.amount": "2", "spark.task.resource.gpu.amount": "1",
        "spark.executor.resource.gpu.discoveryScript": str(REPO / "conf" / "gpu-discovery.sh"),
    }, timeout=240)
    assert res.returncode == 0, res.tail()
    got = pd.read_parquet(out)
    assert sorted(got.part) == list(range(8))
    assert set(got.address) <= {"0", "1"} and got.address.notna().all()
    assert (got.ordinal == got.address.astype(int)).all()
    # No CUDA here: the encoder falls back to the CPU even though Spark granted a GPU.
    assert (got.device == "cpu").all()
    # Tasks that ran at the same time held different GPUs.
    rows = got.sort_values("t0").to_dict("records")
    overlaps = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]
                if a["t0"] < b["t1"] and b["t0"] < a["t1"]]
    assert overlaps, "expected two tasks to run at once on the 2-GPU executor"
    assert all(a["address"] != b["address"] for a, b in overlaps), json.dumps(rows)
