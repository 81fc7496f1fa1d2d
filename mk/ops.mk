# mk/ops.mk — operations targets (included by the top-level Makefile: `include mk/ops.mk`).
#
#   make airflow-venv    create/refresh .venv-airflow (Airflow 3 + Spark provider, own venv)
#   make test-dag        DAG tests, Airflow part required (fails if the venv can't be made)
#   make test-cluster    Spark standalone master + 2 workers on 127.0.0.1, pipeline submitted
#   make test-query      DuckDB / Spark SQL query helper tests
#   make test-ops        the three above
#   make gpu-discovery   print what conf/gpu-discovery.sh reports on this host
#   make cluster-up      a standalone cluster on loopback for manual poking (Ctrl-C stops it)
#
# Uses the main Makefile's VENV/BIN/STAMP when defined; standalone defaults otherwise.

VENV          ?= .venv
BIN           ?= $(VENV)/bin
AIRFLOW_VENV  ?= .venv-airflow
AIRFLOW_VERSION ?= 3.3.2
OPS_PYTEST    ?= $(BIN)/python -m pytest -q -ra

.PHONY: airflow-venv test-dag test-cluster test-query test-ops gpu-discovery cluster-up

airflow-venv:
	AIRFLOW_VENV="$(abspath $(AIRFLOW_VENV))" AIRFLOW_VERSION="$(AIRFLOW_VERSION)" \
	    bash scripts/airflow_env.sh

test-dag: $(STAMP) airflow-venv
	AIRFLOW_VENV="$(abspath $(AIRFLOW_VENV))" CBS_REQUIRE_AIRFLOW=1 $(OPS_PYTEST) tests/test_dag.py

test-cluster: $(STAMP)
	$(OPS_PYTEST) -m cluster tests/test_cluster_standalone.py

test-query: $(STAMP)
	$(OPS_PYTEST) tests/test_query.py

test-ops: test-query test-dag test-cluster

gpu-discovery:
	@conf/gpu-discovery.sh

cluster-up: $(STAMP)
	$(BIN)/python tests/sparkcluster.py /tmp/cbs-standalone
