"""Shared plumbing of the spark-submit entry points in ``jobs/``."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from .config import ConfigError, PipelineConfig, load_config
from .encode.errors import EncodeError
from .logs import setup_logging

log = logging.getLogger("clinicalbert_spark.jobs")

COMMON_ALIASES = {
    "--input": "input.path",
    "--input-format": "input.format",
    "--output-format": "output.format",
    "--no-text": None,  # handled as segment.include_text=false
    "--master": "spark.master",
    "--run-id": "run.run_id",
    "--allow-pickle": "encode.allow_pickle",
}


def run_job(main: Callable[[PipelineConfig], int], argv: list[str] | None, aliases: dict,
            description: str) -> int:
    """Parse flags into a config, run ``main``, turn known errors into a one-line message."""
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--no-text" in argv:  # the PHI switch deserves its own short flag
        argv = [a for a in argv if a != "--no-text"] + ["--no-segment.include_text"]
    flags = {k: v for k, v in {**COMMON_ALIASES, **aliases}.items() if v}
    try:
        cfg = load_config(argv, aliases=flags, description=description)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return main(cfg)
    except (ConfigError, ValueError, FileNotFoundError, NotImplementedError, EncodeError) as e:
        # Our own messages name paths and settings, never note text.
        log.error("%s: %s", type(e).__name__, e)
        return 1


def pop_flag(argv: list[str], flag: str) -> str | None:
    """Remove ``flag VALUE`` from ``argv`` and return VALUE (job-only flags)."""
    if flag in argv:
        i = argv.index(flag)
        if i + 1 >= len(argv):
            raise SystemExit(f"error: {flag} needs a value")
        value = argv[i + 1]
        del argv[i:i + 2]
        return value
    return None
