"""spark-submit jobs/segment_notes.py --input NOTES --output SENTENCES [--no-text] ...

Notes (MIMIC-III NOTEEVENTS CSV, Parquet, Delta or a catalog table) -> a sentences table with
sections and exact character offsets; rejected records go to SENTENCES_rejects.
"""
import sys

from clinicalbert_spark.cli import run_job
from clinicalbert_spark.commands import segment_job

ALIASES = {"--id-col": "input.id_column", "--text-col": "input.text_column",
           "--output": "output.path", "--backend": "segment.backend"}


def main(argv=None) -> int:
    return run_job(segment_job, argv, ALIASES, __doc__)


if __name__ == "__main__":
    sys.exit(main())
