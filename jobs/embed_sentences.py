"""spark-submit jobs/embed_sentences.py --input SENTENCES --output EMBEDDINGS [--model M]
[--id-col note_id] [--index-col sentence_index] [--text-col text]
[--pooling cls|mean] [--max-length N] [--notes NOTES]

Sentences table -> embeddings table. --notes re-reads sentence text from the notes when the
sentences table was written with --no-text.
"""
import sys

from clinicalbert_spark.cli import pop_flag, run_job
from clinicalbert_spark.commands import embed_job

ALIASES = {"--id-col": "sentence_columns.id_column",
           "--index-col": "sentence_columns.index_column",
           "--text-col": "sentence_columns.text_column", "--output": "output.path", "--model": "encode.model",
           "--revision": "encode.revision", "--pooling": "encode.pooling",
           "--max-length": "encode.max_length", "--max-tokens": "encode.max_tokens"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    notes = pop_flag(argv, "--notes")
    return run_job(lambda cfg: embed_job(cfg, notes), argv, ALIASES, __doc__)


if __name__ == "__main__":
    sys.exit(main())
