"""A real Spark standalone cluster (master + 2 workers on 127.0.0.1) running the pipeline, plus
checks of conf/spark-*.conf and conf/gpu-discovery.sh.

The cluster tests start JVMs (~10 s) and submit with spark-submit in client mode, shipping the
package to the executors as a --py-files zip, the way a cluster without the package installed
gets it. Executors run the same Python interpreter (spark.pyspark.python).
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:  # tests/ is a package or a plain folder on sys.path depending on the runner
    from tests.sparkcluster import (StandaloneCluster, app_by_name, build_pyfiles_zip,
                                    java_available, spark_home)
except ImportError:  # pragma: no cover
    from sparkcluster import (StandaloneCluster, app_by_name, build_pyfiles_zip, java_available,
                              spark_home)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DEMO_CSV = Path(os.environ.get("CBS_DEMO_CSV") or REPO / "demo" / "NOTEEVENTS_demo.csv")
DEMO_YAML = CONF / "demo.yaml"
PIPELINE = REPO / "jobs" / "run_pipeline.py"

# --------------------------------------------------------------------------------------------
# conf/gpu-discovery.sh


def _discover(env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    r = subprocess.run([str(CONF / "gpu-discovery.sh")], capture_output=True, text=True,
                       env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_gpu_discovery_script_is_executable_and_prints_json():
    mode = (CONF / "gpu-discovery.sh").stat().st_mode
    assert mode & stat.S_IXUSR, "conf/gpu-discovery.sh must be executable (Spark execs it)"
    out = _discover()  # this machine: real nvidia-smi if present, else none
    assert out["name"] == "gpu" and isinstance(out["addresses"], list)
    assert all(re.fullmatch(r"\d+", a) for a in out["addresses"])


def test_gpu_discovery_without_and_with_nvidia_smi(tmp_path):
    assert _discover({"NVIDIA_SMI": str(tmp_path / "absent")}) == {"name": "gpu", "addresses": []}
    failing = tmp_path / "nvidia-smi-broken"
    failing.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    failing.chmod(0o755)
    assert _discover({"NVIDIA_SMI": str(failing)})["addresses"] == []
    fake = tmp_path / "nvidia-smi"
    # what `nvidia-smi --query-gpu=index --format=csv,noheader` prints on a 4-GPU node
    fake.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=index" ] || exit 3\nprintf "0\\n1\\n2\\n3\\n"\n')
    fake.chmod(0o755)
    assert _discover({"NVIDIA_SMI": str(fake)}) == {"name": "gpu",
                                                    "addresses": ["0", "1", "2", "3"]}
    # and via PATH, the way Spark runs it
    assert _discover({"PATH": f"{tmp_path}:{os.environ['PATH']}"})["addresses"] == \
        ["0", "1", "2", "3"]


# --------------------------------------------------------------------------------------------
# conf/spark-*.conf


def _props(path: Path) -> dict[str, str]:
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split(None, 1)
        assert len(parts) == 2, f"{path.name}:{n}: expected 'key value', got {line!r}"
        k, v = parts
        assert k.startswith("spark."), f"{path.name}:{n}: {k}"
        assert k not in out, f"{path.name}:{n}: duplicate key {k}"
        out[k] = v
    return out


CONF_FILES = ["spark-local.conf", "spark-standalone.conf", "spark-gpu.conf",
              "spark-yarn-gpu.conf", "spark-k8s-gpu.conf"]
GPU_FILES = ["spark-gpu.conf", "spark-yarn-gpu.conf", "spark-k8s-gpu.conf"]


@pytest.mark.parametrize("name", CONF_FILES)
def test_conf_file_parses_and_numbers_are_explained(name):
    path = CONF / name
    props = _props(path)
    assert props
    # Every setting with a number in it sits under a comment block: walk the file and check
    # that a comment appeared since the previous blank line.
    commented = False
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s:
            commented = False
        elif s.startswith("#"):
            commented = True
        elif re.search(r"\d", s.split(None, 1)[1]):
            assert commented, f"{name}: {s!r} has no comment explaining it"


@pytest.mark.parametrize("name", GPU_FILES)
def test_gpu_confs_agree_and_are_consistent(name):
    base = _props(CONF / "spark-gpu.conf")
    props = _props(CONF / name)
    for key in ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount",
                "spark.executor.resource.gpu.discoveryScript", "spark.executor.cores",
                "spark.task.cpus", "spark.python.worker.reuse",
                "spark.sql.execution.arrow.maxRecordsPerBatch", "spark.executor.memory",
                "spark.executor.memoryOverhead"):
        assert props.get(key) == base[key], f"{name}: {key} differs from spark-gpu.conf"
    # CPU slots == GPU slots, otherwise one of the two resources idles.
    cpu_slots = int(props["spark.executor.cores"]) // int(props["spark.task.cpus"])
    gpu_slots = float(props["spark.executor.resource.gpu.amount"]) / float(
        props["spark.task.resource.gpu.amount"])
    assert cpu_slots == gpu_slots == 4
    # RLIMIT_AS would break CUDA; python memory is budgeted in the overhead instead.
    assert "spark.executor.pyspark.memory" not in props
    assert "rapids" not in (CONF / name).read_text().lower().replace("no rapids", "")


def test_spark_submit_parses_every_conf_file(tmp_path):
    """spark-submit itself loads each properties file and reports the same key/value pairs we
    parse (catches syntax Spark reads differently, e.g. a stray '=' or a trailing comment). The
    app is a no-op Python file, so no SparkContext starts; the cluster-specific interpreter paths
    and deploy mode are overridden so the files load on this machine."""
    why = java_available()
    if why:
        pytest.skip(why)
    app = tmp_path / "noop.py"
    app.write_text("print('APP_RAN')\n")
    env = {**os.environ, "SPARK_CONF_DIR": str(tmp_path), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    procs = {}
    for name in CONF_FILES:  # in parallel: ~5 s of JVM start each
        argv = [str(spark_home() / "bin" / "spark-submit"), "--verbose",
                "--properties-file", str(CONF / name), "--master", "local[1]",
                "--deploy-mode", "client",
                "--conf", f"spark.pyspark.python={sys.executable}",
                "--conf", f"spark.pyspark.driver.python={sys.executable}", str(app)]
        procs[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, env=env, start_new_session=True)
    overridden = {"spark.master", "spark.submit.deployMode", "spark.pyspark.python",
                  "spark.pyspark.driver.python"}
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            raise
        assert proc.returncode == 0 and "APP_RAN" in out, f"{name}:\n{out[-3000:]}"
        seen = dict(re.findall(r"^\s*\((spark\.[^,]+),(.*)\)\s*$", out, re.M))
        for k, v in _props(CONF / name).items():
            # spark.redaction.regex hides values of keys like *TOKEN* in this listing
            if k not in overridden and seen.get(k) != "*********(redacted)":
                assert seen.get(k) == v, f"{name}: Spark read {k}={seen.get(k)!r}, file says {v!r}"


# --------------------------------------------------------------------------------------------
# The standalone cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = java_available()
    if why:
        pytest.skip(f"standalone cluster tests need Java: {why}")
    root = tmp_path_factory.mktemp("standalone")
    c = StandaloneCluster(root, workers=2, worker_cores=1, worker_memory="2g",
                          extra_env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                     "TOKENIZERS_PARALLELISM": "false", "CBS_TORCH_THREADS": "1"})
    t0 = time.monotonic()
    c.start()
    c.start_seconds = time.monotonic() - t0
    try:
        yield c
    finally:
        problems = c.stop()
        # A teardown failure is reported as an ERROR of its own; it does not hide test results.
        assert not c.leftovers(), f"processes left running after stop: {c.leftovers()}"
        if problems:
            print(f"standalone cluster needed SIGKILL: {problems}", file=sys.stderr)


@pytest.fixture(scope="module")
def pyfiles(tmp_path_factory):
    """The package as a --py-files zip (the executors have no clinicalbert_spark installed)."""
    return build_pyfiles_zip(REPO / "clinicalbert_spark",
                             tmp_path_factory.mktemp("pyfiles") / "clinicalbert_spark.zip")


def _executors_of(cluster, app_id):
    """(worker id, executor id) of every executor this app had, from the workers' own JSON."""
    out = []
    for w in cluster.worker_states():
        for e in w.get("executors", []) + w.get("finishedexecutors", []):
            if e.get("appid") == app_id:
                out.append((w["id"], e["id"]))
    return out


def test_cluster_is_up_on_loopback(cluster):
    state = cluster.master_state()
    alive = [w for w in state["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == 2 and all(w["cores"] == 1 for w in alive)
    assert state["url"] == cluster.master_url and state["status"] == "ALIVE"
    assert all(w["host"] == "127.0.0.1" for w in alive)


def test_cluster_runs_shipped_python(cluster, tmp_path):
    """A stand-in job (no pipeline needed): a pandas UDF that imports a module shipped with
    --py-files runs on executors of both workers. test_pipeline_on_standalone_cluster checks
    the same things on the real job, so this one only runs while the pipeline can't (or with
    CBS_CLUSTER_PROBE=1), keeping the module well under CI's time budget."""
    if _pipeline_missing() == [] and os.environ.get("CBS_CLUSTER_PROBE") != "1":
        pytest.skip("covered by test_pipeline_on_standalone_cluster (CBS_CLUSTER_PROBE=1 runs it)")
    pkg = tmp_path / "cbsprobe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def tag(x):\n    return f'probe-{x}'\n")
    zip_path = build_pyfiles_zip(pkg, tmp_path / "cbsprobe.zip")
    out = tmp_path / "probe_out"
    app = tmp_path / "probe_app.py"
    app.write_text(
        "import os, sys\n"
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.appName('cbs-probe').getOrCreate()\n"
        "def f(batches):\n"
        "    import cbsprobe\n"
        "    for pdf in batches:\n"
        "        pdf['tag'] = pdf['id'].map(cbsprobe.tag)\n"
        "        pdf['cwd'] = os.getcwd()\n"
        "        yield pdf\n"
        "df = spark.range(0, 400, numPartitions=8).mapInPandas(f, 'id long, tag string, cwd string')\n"
        "df.write.mode('overwrite').parquet(sys.argv[1])\n"
        "spark.stop()\n")
    res = cluster.submit([app, out], py_files=[zip_path], log_name="probe", timeout=180,
                         conf={"spark.executor.cores": "1", "spark.executor.memory": "512m"})
    assert res.returncode == 0, res.tail()
    import pandas as pd

    df = pd.read_parquet(out)
    assert sorted(df.id) == list(range(400))
    assert (df.tag == "probe-" + df.id.astype(str)).all()
    # The UDFs ran inside the workers' work dirs, i.e. in executors, not in the driver.
    assert all(str(cluster.work_root / "work") in c for c in df.cwd.unique())
    app_info = app_by_name(cluster.master_state(), "cbs-probe")
    assert app_info and app_info["state"] == "FINISHED"
    assert len({w for w, _ in _executors_of(cluster, app_info["id"])}) == 2


def _pipeline_missing() -> list[str]:
    return [str(p) for p in (PIPELINE, DEMO_CSV, DEMO_YAML) if not p.exists()]


def _need_pipeline():
    missing = _pipeline_missing()
    if missing:
        pytest.skip(f"pipeline not available yet: missing {', '.join(missing)}")


def test_pipeline_on_standalone_cluster(cluster, pyfiles, tmp_path):
    _need_pipeline()
    root = tmp_path / "tables"
    run_id = "cluster-test-1"
    res = cluster.submit(
        [PIPELINE, "--input", DEMO_CSV, "--output-root", root, "--config", DEMO_YAML,
         "--run-id", run_id, "--stages", "segment,embed,aggregate",
         "--spark.app_name", "cbs-cluster-test",
         # conf/demo.yaml sets spark.master local[2] for the demo; the job's config is applied
         # when it builds its session, so point it at the cluster too.
         "--spark.master", cluster.master_url],
        py_files=[pyfiles], cwd=REPO, log_name="pipeline", timeout=420,
        conf={"spark.executor.cores": "1", "spark.executor.memory": "1g",
              "spark.cores.max": "2", "spark.sql.shuffle.partitions": "4",
              # the model is loaded once per Python worker, not once per task
              "spark.python.worker.reuse": "true"})
    assert res.returncode == 0, res.tail(120)
    print(f"\ncluster start {cluster.start_seconds:.1f}s, pipeline submit {res.seconds:.1f}s")

    # --- it really ran on the cluster: a finished app with executors on both workers, and
    # tasks in those executors' logs.
    app = app_by_name(cluster.master_state(), "cbs-cluster-test")
    assert app is not None, "the pipeline's app is not in the master's completedapps"
    assert app["state"] == "FINISHED" and app["cores"] == 2
    execs = _executors_of(cluster, app["id"])
    assert len({w for w, _ in execs}) == 2, execs
    logs = cluster.executor_logs(app["id"])
    assert logs and sum("Finished task" in p.read_text(errors="replace") for p in logs) >= 2

    # --- the tables
    import pandas as pd

    from clinicalbert_spark.query import connect

    notes = pd.read_csv(DEMO_CSV, dtype=str, keep_default_na=False)
    # The demo has deliberately bad records (ISERROR=1, a duplicate ROW_ID): the pipeline keeps
    # the first usable record of an id.
    usable = notes[notes.ISERROR.str.strip() != "1"].assign(ROW_ID=lambda d: d.ROW_ID.str.strip())
    text_of = dict(usable.drop_duplicates("ROW_ID", keep="first")[["ROW_ID", "TEXT"]].values)
    con = connect(root)
    sent = con.execute("SELECT * FROM sentences").df()
    assert len(sent) > 0 and set(sent.run_id) == {run_id}
    bad = [(r.note_id, r.sentence_index) for r in sent.itertuples()
           if text_of[r.note_id][r.start:r.end] != r.text]
    assert not bad, f"{len(bad)} sentences whose text != note[start:end], e.g. {bad[:5]}"
    rejects = con.execute("SELECT reason, count(*) FROM rejects GROUP BY reason").fetchall()
    assert rejects, "the demo corpus has bad records: rejects must not be empty"
    n_emb = con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    assert n_emb == len(sent)
    keys = con.execute("""SELECT count(*) FROM embeddings e ANTI JOIN sentences s
                          ON s.note_id = e.note_id AND s.sentence_index = e.sentence_index"""
                       ).fetchone()[0]
    assert keys == 0
    dims = con.execute("SELECT DISTINCT dim, len(embedding) FROM embeddings").fetchall()
    assert dims == [(384, 384)]  # all-MiniLM-L6-v2
    runs = con.execute("SELECT run_id FROM runs").fetchall()
    assert runs == [(run_id,)]
    assert con.execute("SELECT count(DISTINCT note_id) FROM note_embeddings").fetchone()[0] \
        == sent.note_id.nunique()
