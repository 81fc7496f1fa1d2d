"""spark-submit jobs/predict.py --input SENTENCES --output PREDICTIONS [--model M]
[--task auto|fill-mask|sequence-classification|token-classification] [--top-k K] [--notes NOTES]

Runs the head the checkpoint carries (fill-mask for Bio_ClinicalBERT itself) over a sentences
table; token-classification spans are written as offsets into the original note.
"""
import sys

from clinicalbert_spark.cli import pop_flag, run_job
from clinicalbert_spark.commands import predict_job

ALIASES = {"--id-col": "sentence_columns.id_column",
           "--index-col": "sentence_columns.index_column",
           "--text-col": "sentence_columns.text_column", "--output": "output.path", "--model": "encode.model",
           "--revision": "encode.revision", "--task": "predict.task", "--top-k": "predict.top_k",
           "--max-length": "encode.max_length"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    notes = pop_flag(argv, "--notes")
    return run_job(lambda cfg: predict_job(cfg, notes), argv, ALIASES, __doc__)


if __name__ == "__main__":
    sys.exit(main())
