"""spark-submit jobs/run_pipeline.py --input NOTES --output-root ROOT [--model M]
[--stages segment,embed,predict,aggregate] [--run-id ID] [--full-refresh]

The nightly run: notes -> sentences -> embeddings -> (predictions) -> note vectors, with
rejects and a runs table, incremental (only new or changed notes) and idempotent per run id.
"""
import sys

from clinicalbert_spark.cli import run_job
from clinicalbert_spark.commands import pipeline_job

ALIASES = {"--id-col": "input.id_column", "--text-col": "input.text_column",
           "--output-root": "output.root", "--model": "encode.model",
           "--revision": "encode.revision", "--pooling": "encode.pooling",
           "--max-length": "encode.max_length", "--stages": "run.stages",
           "--full-refresh": "run.full_refresh", "--predict": "predict.enabled",
           "--predict-model": "predict.model"}


def main(argv=None) -> int:
    return run_job(pipeline_job, argv, ALIASES, __doc__)


if __name__ == "__main__":
    sys.exit(main())
