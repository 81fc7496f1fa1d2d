# Two commands set everything up on a fresh machine (Python 3.11, Java 17):
#   make demo   install into .venv and run the whole pipeline on the bundled demo corpus
#   make test   install into .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
# CPU build by default (CI, laptops). GPU clusters: make install TORCH_SPEC="torch==2.13.0" \
#   PIP_EXTRA="--index-url https://download.pytorch.org/whl/cu126" (see README "GPU clusters").
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA  ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast bench clean
install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/run_pipeline.py --config conf/demo.yaml \
	    --input demo/NOTEEVENTS_demo.csv --output-root demo_output --run-id demo --full-refresh
	$(BIN)/python -m clinicalbert_spark.query sql --root demo_output \
	    "SELECT category, section_category, count(*) AS sentences FROM sentences GROUP BY ALL ORDER BY sentences DESC LIMIT 10"

# Two pytest workers (one test file each at a time): most of a test's wall time is JVM and
# Python-worker start-up and py4j round trips, which overlap well even on 2 cores.
TEST_WORKERS ?= 2
test: $(STAMP) airflow-venv
	CBS_REQUIRE_AIRFLOW=1 CBS_REQUIRE_CONNECT=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not cluster and not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/segment_bench.py
	$(BIN)/python benchmarks/encode_bench.py

clean:
	rm -rf demo_output spark-warehouse metastore_db derby.log .pytest_cache

include mk/ops.mk
