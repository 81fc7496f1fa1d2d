"""Airflow DAG: the nightly clinical-notes pipeline, one task per stage.

    segment -> embed -> predict -> aggregate

(predict is opt-in per run: the ``run_predict`` param; when off it is skipped and aggregate,
trigger rule ``none_failed``, still runs.)

Each task runs ``jobs/run_pipeline.py --stages <stage>`` with the SAME run id (derived from the
Airflow run id), so the four Spark applications of one DAG run write one logical pipeline run
(the ``run_id`` partition of every table; the ``runs`` row of that id is rewritten by each
stage's application). The pipeline is incremental and idempotent per run id: retrying a task,
or clearing and re-running the whole DAG run, rewrites that run's partitions instead of
appending duplicates.

Operators: ``SparkSubmitOperator`` when ``apache-airflow-providers-apache-spark`` is installed
(the Spark master then comes from the Airflow connection named by the ``spark_conn_id`` param,
managed by the platform team), else a ``BashOperator`` running ``spark-submit`` (the master from
the ``spark_master`` param, or spark-defaults when empty). Either way the command line is built
by :func:`build_stage_command` / :func:`build_job_args`, pure functions with no Airflow import,
which tests/test_dag.py also runs on the demo corpus.

Works on Airflow 3 (``airflow.sdk``) and Airflow 2.7+ (``airflow.DAG``). Deployment settings
come from environment variables read at parse time (so one DAG file serves dev and prod):

    CBS_REPO            checkout/installation with jobs/ and conf/  (default: this file's repo)
    CBS_INPUT           default input notes                        (default: demo corpus)
    CBS_OUTPUT_ROOT     default table root                          (default: /data/clinicalbert)
    CBS_CONFIG          default config file                         (default: conf/default.yaml)
    CBS_SPARK_SUBMIT    spark-submit binary for the Bash path       (default: spark-submit)
    CBS_PROPERTIES_FILE Spark properties file (e.g. conf/spark-yarn-gpu.conf), optional
    CBS_PY_FILES        --py-files for the executors (a zip/wheel of the package), optional
"""
from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

DAG_ID = "clinicalbert_notes"
STAGES: tuple[str, ...] = ("segment", "embed", "predict", "aggregate")
OUTPUT_FORMATS = ("parquet", "delta")

REPO = Path(os.environ.get("CBS_REPO") or Path(__file__).resolve().parents[1])
JOB = "jobs/run_pipeline.py"

DEFAULT_PARAMS: dict[str, Any] = {
    "input_path": os.environ.get("CBS_INPUT", str(REPO / "demo" / "NOTEEVENTS_demo.csv")),
    "output_root": os.environ.get("CBS_OUTPUT_ROOT", "/data/clinicalbert"),
    # Empty: the config file's model (conf/default.yaml: Bio_ClinicalBERT).
    "model": "",
    "config_file": os.environ.get("CBS_CONFIG", str(REPO / "conf" / "default.yaml")),
    # Bash path only: --master for spark-submit; empty = spark-defaults / properties file.
    "spark_master": "",
    # SparkSubmitOperator path only: the Airflow connection that holds the master URL.
    "spark_conn_id": "spark_default",
    "output_format": "parquet",
    "properties_file": os.environ.get("CBS_PROPERTIES_FILE", ""),
    "py_files": os.environ.get("CBS_PY_FILES", ""),
    # The predict stage (fill-mask/classification heads over every sentence) is opt-in, like
    # predict.enabled in conf/default.yaml: it costs as much GPU time as embedding, and a model
    # without a head (the demo's MiniLM) can't run it. Off: the task is skipped, aggregate runs.
    "run_predict": False,
}


def stage_enabled(stage: str, params: Mapping[str, Any]) -> bool:
    """Whether a DAG run with these params runs ``stage`` (the others are skipped)."""
    return stage != "predict" or _truthy(params.get("run_predict"))


def _truthy(v: Any) -> bool:
    return v is True or str(v).strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------------
# Pure command building (no Airflow import; tests/test_dag.py calls these directly)


def sanitize_run_id(run_id: str) -> str:
    """An Airflow run id (``scheduled__2026-01-01T00:00:00+00:00``) as a pipeline run id: the
    same alphabet the pipeline accepts for partition names (letters, digits, ``- _ .``), so the
    id we pass is the id written to the tables, unchanged."""
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in run_id)
    safe = safe.strip("_")
    if not safe:
        raise ValueError(f"run id {run_id!r} has no usable characters")
    return safe[:128]


def _is_template(value: str) -> bool:
    # Values are Jinja expressions when the DAG builds its Bash template (rendered at run time,
    # validated by the DAG's Param schema instead).
    return "{{" in value


def build_job_args(stage: str, params: Mapping[str, Any], run_id: str) -> list[str]:
    """The arguments of ``jobs/run_pipeline.py`` for one stage (no launcher, no Spark options)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")
    fmt = str(params.get("output_format") or "parquet")
    if fmt not in OUTPUT_FORMATS and not _is_template(fmt):
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, not {fmt!r}")
    for key in ("input_path", "output_root"):
        if not params.get(key):
            raise ValueError(f"param {key!r} is required")
    args: list[str] = []
    if params.get("config_file"):
        args += ["--config", str(params["config_file"])]
    args += ["--input", str(params["input_path"]), "--output-root", str(params["output_root"]),
             "--run-id", run_id, "--stages", stage, "--output-format", fmt]
    if params.get("model"):
        args += ["--model", str(params["model"])]
    if stage == "predict":
        # The predict stage is switched off in the default configs (predict.enabled: false);
        # a DAG that schedules it means it.
        args += ["--predict.enabled", "true"]
    return args


def build_stage_command(
    stage: str,
    params: Mapping[str, Any],
    run_id: str,
    *,
    launcher: str = "spark-submit",
    spark_submit: str | None = None,
    python: str | None = None,
    repo: str | Path | None = None,
) -> list[str]:
    """The full command line of one stage.

    ``launcher="spark-submit"``: ``spark-submit [--master M] [--properties-file F]
    [--py-files Z] <repo>/jobs/run_pipeline.py <job args>`` (what the Bash task runs).
    ``launcher="python"``: ``python <repo>/jobs/run_pipeline.py <job args> [--spark.master M]``
    (local runs and tests; the job starts its own SparkSession).
    """
    repo = Path(repo) if repo else REPO
    job = str(repo / JOB)
    args = build_job_args(stage, params, run_id)
    master = str(params.get("spark_master") or "")
    if launcher == "python":
        cmd = [python or sys.executable, job, *args]
        if master:
            cmd += ["--spark.master", master]
        return cmd
    if launcher != "spark-submit":
        raise ValueError(f"launcher must be 'spark-submit' or 'python', not {launcher!r}")
    cmd = [spark_submit or os.environ.get("CBS_SPARK_SUBMIT", "spark-submit")]
    if master:
        cmd += ["--master", master]
    # One application name per stage: the Spark UI/history server and YARN show which stage.
    cmd += ["--name", f"{DAG_ID}.{stage}.{run_id}"]
    if params.get("properties_file"):
        cmd += ["--properties-file", str(params["properties_file"])]
    if params.get("py_files"):
        cmd += ["--py-files", str(params["py_files"])]
    if master:
        # spark-submit's master must also reach the job's own config, which may set one.
        args = [*args, "--spark.master", master]
    return [*cmd, job, *args]


# ---------------------------------------------------------------------------------------------
# The DAG (only when Airflow is importable: the module stays importable without it)

try:  # Airflow 3
    from airflow.sdk import DAG, Param

    AIRFLOW_MAJOR = 3
except ImportError:  # Airflow 2
    try:
        from airflow import DAG  # type: ignore[no-redef]
        from airflow.models.param import Param  # type: ignore[no-redef]

        AIRFLOW_MAJOR = 2
    except ImportError:
        DAG = None  # type: ignore[assignment,misc]
        AIRFLOW_MAJOR = 0

try:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    HAVE_SPARK_PROVIDER = os.environ.get("CBS_FORCE_BASH", "") not in ("1", "true")
except ImportError:
    SparkSubmitOperator = None  # type: ignore[assignment,misc]
    HAVE_SPARK_PROVIDER = False

RUN_ID_TEMPLATE = "{{ run_id | cbs_run_id }}"

DEFAULT_ARGS = {
    "owner": "clinical-data-platform",
    # Spark jobs fail transiently (preempted executors, a lost node, a busy GPU queue); two
    # retries ten minutes apart ride that out. The pipeline is idempotent per run id, so a retry
    # overwrites the failed attempt's partitions.
    "retries": 2,
    "retry_delay": timedelta(minutes=10),
    # A stage on the full NOTEEVENTS (2M notes) takes hours on a few GPUs, never a day: a hung
    # job must not block the next night's run forever (max_active_runs=1).
    "execution_timeout": timedelta(hours=12),
    "depends_on_past": False,
}


def _render_params(params: Mapping[str, Any]) -> dict[str, Any]:
    # Airflow passes a ParamsDict; plain values are what the builders want.
    return {k: params[k] for k in params}


if SparkSubmitOperator is not None:

    class PipelineStageSubmitOperator(SparkSubmitOperator):
        """SparkSubmitOperator for one pipeline stage: the application arguments are built at run
        time from the DAG run's params by :func:`build_job_args` (so empty optional params are
        left out rather than passed as empty strings), and the Spark connection is the
        ``spark_conn_id`` param."""

        def __init__(self, *, stage: str, **kwargs: Any) -> None:
            super().__init__(application=str(REPO / JOB), name=f"{DAG_ID}.{stage}", **kwargs)
            self.stage = stage

        def configure(self, params: Mapping[str, Any], run_id: str) -> None:
            p = _render_params(params)
            self.application_args = build_job_args(self.stage, p, sanitize_run_id(run_id))
            self.name = f"{DAG_ID}.{self.stage}.{sanitize_run_id(run_id)}"
            # The provider reads the connection id from this attribute when it builds the hook
            # (apache-airflow-providers-apache-spark 4.x-6.x).
            self._conn_id = p.get("spark_conn_id") or "spark_default"
            if p.get("properties_file"):
                self.properties_file = p["properties_file"]
            if p.get("py_files"):
                self.py_files = p["py_files"]

        def execute(self, context: Any) -> None:
            if not stage_enabled(self.stage, context["params"]):
                try:
                    from airflow.exceptions import AirflowSkipException
                except ImportError:  # pragma: no cover - newer SDK location
                    from airflow.sdk.exceptions import AirflowSkipException
                raise AirflowSkipException(f"stage {self.stage} disabled by params.run_predict")
            self.configure(context["params"], context["run_id"])
            return super().execute(context)


def _make_task(stage: str):
    # aggregate must run after a *skipped* predict (run_predict off), not after a failed one.
    extra: dict[str, Any] = {"trigger_rule": "none_failed"} if stage == "aggregate" else {}
    if HAVE_SPARK_PROVIDER:
        return PipelineStageSubmitOperator(task_id=stage, stage=stage, **extra)
    try:  # Airflow 3: the standard provider
        from airflow.providers.standard.operators.bash import BashOperator
    except ImportError:  # Airflow 2
        from airflow.operators.bash import BashOperator  # type: ignore[no-redef]
    # The command is a Jinja template: params and the run id are rendered at run time and each
    # value is shell-quoted (the `sh` filter), so paths with spaces or quotes stay one argument.
    tmpl_params = {k: "{{ params.%s }}" % k for k in DEFAULT_PARAMS}
    cmd = _bash_template(build_stage_command(stage, tmpl_params, RUN_ID_TEMPLATE))
    if stage == "predict":
        # exit 99 = BashOperator's skip_on_exit_code: the task is marked skipped, not failed.
        cmd = ("{% if params.run_predict %}" + cmd +
               "{% else %}echo 'predict disabled (params.run_predict)'; exit 99{% endif %}")
    return BashOperator(task_id=stage, bash_command=cmd, cwd=str(REPO), **extra)


def _sh(value: Any) -> str:
    return shlex.quote(str(value))


def _bash_template(cmd: Sequence[str]) -> str:
    """Join a command whose items may be Jinja expressions: ``{{ x }}`` items become
    ``{{ x | sh }}`` (shell-quoted at render time); a ``--flag {{ params.p }}`` pair is wrapped in
    ``{% if params.p %}`` so an empty optional param leaves the flag out."""
    out: list[str] = []
    i = 0
    while i < len(cmd):
        item = cmd[i]
        nxt = cmd[i + 1] if i + 1 < len(cmd) else None
        if item.startswith("--") and nxt and nxt.startswith("{{ params.") and nxt.endswith(" }}"):
            expr = nxt[3:-3].strip()
            out.append("{%% if %s %%}%s {{ %s | sh }}{%% endif %%}" % (expr, item, expr))
            i += 2
            continue
        out.append("{{ %s | sh }}" % item[3:-3].strip() if item.startswith("{{") else
                   shlex.quote(item))
        i += 1
    return " ".join(out)


if DAG is not None:
    with DAG(
        dag_id=DAG_ID,
        description="Clinical notes -> sentences -> Bio_ClinicalBERT embeddings (-> predictions)"
                    " -> note vectors",
        schedule="@daily",
        start_date=datetime(2026, 1, 1),
        # Backfilling every missed day would re-run the whole (incremental) pipeline N times on
        # the same tables; one run picks up everything new since the last one.
        catchup=False,
        # Runs write the same tables: two concurrent runs would race on the incremental
        # "what is new" computation and on table commits.
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params={
            "input_path": Param(DEFAULT_PARAMS["input_path"], type="string", minLength=1,
                                description="notes: NOTEEVENTS CSV, Parquet or Delta path"),
            "output_root": Param(DEFAULT_PARAMS["output_root"], type="string", minLength=1,
                                 description="folder of the output tables"),
            "model": Param(DEFAULT_PARAMS["model"], type="string",
                           description="encoder model (hub id, path, pkg:...); empty = config's"),
            "config_file": Param(DEFAULT_PARAMS["config_file"], type="string",
                                 description="pipeline YAML config (conf/default.yaml)"),
            "spark_master": Param(DEFAULT_PARAMS["spark_master"], type="string",
                                  description="spark-submit --master (Bash operator path); "
                                              "empty = properties file / spark-defaults"),
            "spark_conn_id": Param(DEFAULT_PARAMS["spark_conn_id"], type="string",
                                   description="Airflow Spark connection (SparkSubmitOperator)"),
            "output_format": Param(DEFAULT_PARAMS["output_format"], type="string",
                                   enum=list(OUTPUT_FORMATS)),
            "properties_file": Param(DEFAULT_PARAMS["properties_file"], type="string",
                                     description="spark-submit --properties-file, e.g. "
                                                 "conf/spark-yarn-gpu.conf"),
            "py_files": Param(DEFAULT_PARAMS["py_files"], type="string",
                              description="spark-submit --py-files (package zip/wheel)"),
            "run_predict": Param(DEFAULT_PARAMS["run_predict"], type="boolean",
                                 description="run the predict stage (needs a model with a "
                                             "head; off: predict is skipped)"),
        },
        user_defined_filters={"cbs_run_id": sanitize_run_id, "sh": _sh},
        tags=["clinical-notes", "spark", "nlp"],
        doc_md=__doc__,
    ) as dag:
        tasks = [_make_task(stage) for stage in STAGES]
        for upstream, downstream in zip(tasks, tasks[1:]):
            upstream >> downstream
