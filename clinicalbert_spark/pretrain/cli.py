"""argparse plumbing of the training jobs: every failure is one line and an exit code.

The training jobs' flags do not fit :class:`clinicalbert_spark.config.PipelineConfig`, so they
parse their own; errors are reported exactly as :func:`clinicalbert_spark.cli.run_job` reports
them (:func:`clinicalbert_spark.cli.describe_error`: a message only for this package's own
errors, otherwise the error's type and Spark condition, never a message that could quote note
text). ``CBS_DEBUG=1`` re-raises.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from ..errors import EXIT_FAILURE, ConfigError


def csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def run_main(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
             argv: list[str] | None) -> int:
    from ..cli import _print, _spark_calls, describe_error
    from ..logs import debug_enabled, setup_logging

    setup_logging()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))  # usage errors: 2
    debug = debug_enabled()
    calls = _spark_calls()
    try:
        return body(args)
    except KeyboardInterrupt:
        if debug:
            raise
        _print("error: interrupted")
        return 130
    except ValueError as e:
        if debug:
            raise
        from ..errors import OperatorError

        if isinstance(e, OperatorError):
            code, line = describe_error(e)
        elif _spark_calls() == calls:  # a settings check before any data was read
            code, line = ConfigError.exit_code, f"error: {e}".splitlines()[0]
        else:
            code, line = describe_error(e, used_spark=True)
        _print(line)
        return code
    except Exception as e:  # noqa: BLE001 - the one place every failure is reported
        if debug:
            raise
        code, line = describe_error(e, used_spark=_spark_calls() != calls)
        _print(line if code else f"error: {type(e).__name__}")
        return code or EXIT_FAILURE
