#!/usr/bin/env bash
# Create (or refresh) the project's Airflow virtualenv, idempotently.
#
# Airflow lives in its OWN venv (default: <repo>/.venv-airflow), never in .venv: Airflow 3
# pins SQLAlchemy/pydantic/etc. tightly and would fight the pipeline's own dependencies, and
# a scheduler never needs torch/transformers (the DAG only shells out to spark-submit).
#
# Usage:   scripts/airflow_env.sh            # create or verify
#          FORCE=1 scripts/airflow_env.sh    # rebuild from scratch
# Env:     AIRFLOW_VENV     venv path                    (default <repo>/.venv-airflow)
#          AIRFLOW_VERSION  apache-airflow version       (default 3.3.2)
#          SPARK_PROVIDER   1: also install apache-airflow-providers-apache-spark so the DAG
#                           uses SparkSubmitOperator; 0: BashOperator fallback (default 1)
#          PYTHON           interpreter for the venv     (default python3.11, else python3)
#          AIRFLOW_HOME     used for the smoke check; default: a fresh temporary directory,
#                           so nothing is written to ~/airflow.
#
# Re-running with the same settings is a no-op (a stamp file records what was installed and
# the import check is repeated). Only PyPI is used; Airflow's constraint files live on
# GitHub, which is not reachable from our build hosts, so the few pins that matter are here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AIRFLOW_VENV:-$ROOT/.venv-airflow}"
AIRFLOW_VERSION="${AIRFLOW_VERSION:-3.3.2}"
SPARK_PROVIDER="${SPARK_PROVIDER:-1}"
if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi

# What we install. apache-airflow-providers-apache-spark pulls only pyspark-client (the
# thin Spark Connect client), not the 400 MB pyspark wheel: SparkSubmitOperator just runs the
# spark-submit binary found on PATH / in the Spark connection. <7: the DAG's operator subclass
# sets the connection id the way provider 5.x/6.x read it (tests/test_dag.py checks it).
PKGS=("apache-airflow==${AIRFLOW_VERSION}")
if [[ "$SPARK_PROVIDER" == "1" ]]; then
  PKGS+=("apache-airflow-providers-apache-spark>=5.0,<7")
fi
STAMP="$VENV/.cbs-airflow-stamp"
WANT="python=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ${PKGS[*]}"

tmp_home=""
cleanup() { [[ -n "$tmp_home" ]] && rm -rf "$tmp_home"; }
trap cleanup EXIT
if [[ -z "${AIRFLOW_HOME:-}" ]]; then
  tmp_home="$(mktemp -d -t cbs-airflow-home.XXXXXX)"
  export AIRFLOW_HOME="$tmp_home"
fi
# Keep the smoke check fast and quiet: no example DAGs, no DB needed for an import.
export AIRFLOW__CORE__LOAD_EXAMPLES=False

smoke() {
  "$VENV/bin/python" - <<'PY'
import airflow
print("airflow", airflow.__version__)
try:
    import airflow.providers.apache.spark as sp  # noqa: F401
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator  # noqa: F401
    print("spark provider", getattr(sp, "__version__", "?"))
except ImportError:
    print("spark provider: not installed (DAG falls back to BashOperator)")
PY
}

if [[ "${FORCE:-0}" != "1" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && smoke >/dev/null 2>&1; then
  echo "airflow venv up to date: $VENV ($WANT)"
  smoke
  exit 0
fi

if [[ "${FORCE:-0}" == "1" ]]; then rm -rf "$VENV"; fi
start=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
# The venv sits inside the work tree: make git ignore it whatever the repo's .gitignore says
# (Python >= 3.13 writes this file itself).
printf '*\n' > "$VENV/.gitignore"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${PKGS[@]}"
smoke
printf '%s' "$WANT" > "$STAMP"
echo "airflow venv ready: $VENV in $(( $(date +%s) - start ))s"
