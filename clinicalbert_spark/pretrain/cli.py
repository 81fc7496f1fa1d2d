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


# ---------------------------------------------------------------------------------------------
# Flags, launch and run record shared by jobs/pretrain.py and jobs/finetune.py


def add_training_args(p: argparse.ArgumentParser, batch_size: int, lr: float) -> None:
    """The optimisation, launch and run-record flags every training job takes."""
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help="sequences per optimizer step, all processes together")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--cluster", action="store_true",
                   help="TorchDistributor on the executors (default: on the driver)")
    p.add_argument("--gpu", action="store_true", help="one GPU per process (TorchDistributor)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--master", default=None)
    p.add_argument("--runs-root", default=None,
                   help="also add this run's row to the runs table under this output root")
    p.add_argument("--run-id", default=None, help="the runs row's id (default: time + random)")
    p.add_argument("--runs-format", choices=["auto", "parquet", "delta"], default="auto",
                   help="format of the tables under --runs-root (auto: what is there)")
    p.add_argument("--runs-lock-wait", type=float, default=600.0,
                   help="seconds to wait for a pipeline run holding --runs-root")


def check_launch(a: argparse.Namespace) -> None:
    """One-line errors for launch flags that cannot work (before anything is read)."""
    from ..errors import ConfigError

    if a.processes < 1:
        raise ConfigError("--processes must be >= 1")
    if a.batch_size < 1 or a.grad_accum < 1:
        raise ConfigError("--batch-size and --grad-accum must be >= 1")
    if a.batch_size % (a.processes * a.grad_accum):
        raise ConfigError(f"--batch-size {a.batch_size} must be a multiple of --processes x "
                          f"--grad-accum ({a.processes * a.grad_accum})")


def launch(train: Callable, a: argparse.Namespace, app_name: str, settings: dict, *args):
    """``train(settings, *args)`` in this process, or in each of ``--processes`` processes
    started by pyspark's TorchDistributor (on the driver, or on the executors with
    ``--cluster``); returns rank 0's result."""
    if a.processes == 1 and not a.cluster:
        return train(settings, *args)
    from pyspark.ml.torch.distributor import TorchDistributor

    from ..config import SparkConfig
    from ..spark.session import get_spark
    from .ddp import run_logged

    get_spark(SparkConfig(master=a.master, app_name=app_name))
    if a.threads is None and not a.gpu:
        settings = dict(settings, threads=1)
    return TorchDistributor(num_processes=a.processes, local_mode=not a.cluster,
                            use_gpu=a.gpu).run(run_logged, train, settings, *args)


class RunRecord:
    """This training run's row in the ``runs`` table under ``--runs-root`` (when given).

    The root is checked when the job starts (so that a bad root fails before hours of
    training) and the row is written when it ends, succeeded or failed. A training row has
    ``stages`` = the job (``pretrain``, ``finetune``), ``model``/``model_revision`` = the
    starting checkpoint, ``config_hash`` = the recipe's fingerprint, ``input_records`` = the
    training table's rows, ``tokens`` and ``tokens_per_s`` = tokens trained, and
    ``fingerprints`` = ``{"checkpoint": {"fingerprint", "path", "settings", "metrics"}}``
    (JSON; metrics as in the run summary). Counts of the pipeline's stages are null.
    """

    def __init__(self, a: argparse.Namespace, stage: str):
        import datetime as dt

        from .. import io
        from ..state import TableStore, new_run_id, root_format, sanitise_run_id

        self.root = io.absolute(a.runs_root) if a.runs_root else None
        self.stage = stage
        self.given = a.run_id
        self.run_id = sanitise_run_id(a.run_id or new_run_id())
        self.wait_s = a.runs_lock_wait
        self.started = dt.datetime.now(dt.timezone.utc)
        self.master = a.master
        if self.root:
            self.fmt = root_format(self.root) if a.runs_format == "auto" else a.runs_format
            # A root that cannot hold tables fails now, not after the training.
            TableStore(None, self.root, self.fmt, self.run_id).prepare_root()

    def write(self, status: str, model: str, revision: str | None, settings: dict,
              checkpoint: dict | None = None, input_records: int | None = None,
              tokens: int | None = None, seconds: float | None = None) -> dict | None:
        """Write the row (no-op without ``--runs-root``); returns it."""
        if not self.root:
            return None
        import datetime as dt
        import json

        from .. import schemas
        from ..config import SparkConfig
        from ..models import model_identity
        from ..spark.session import get_spark
        from ..state import fingerprint, write_run_row

        ended = dt.datetime.now(dt.timezone.utc)
        model_id, model_rev = model_identity(model, revision)
        row = {f.name: None for f in schemas.RUNS.fields}
        row.update({
            "run_id": self.run_id, "run_id_given": self.given, "started_at": self.started,
            "ended_at": ended, "status": status, "config_hash": fingerprint(self.stage, settings),
            "schema_version": schemas.SCHEMA_VERSION, "stages": self.stage,
            "model": model_id, "model_revision": model_rev,
            "fingerprints": json.dumps({"checkpoint": checkpoint or {}}, sort_keys=True,
                                       default=str),
            "input_records": input_records, "tokens": tokens,
            "tokens_per_s": tokens / seconds if tokens and seconds else None,
            "seconds_total": (ended - self.started).total_seconds(),
            "seconds_by_stage": json.dumps({self.stage: round(seconds, 2)} if seconds else {}),
        })
        spark = get_spark(SparkConfig(master=self.master, app_name=self.stage))
        write_run_row(spark, self.root, self.fmt, row, self.wait_s)
        return row

    def write_failed(self, model: str, revision: str | None, settings: dict) -> None:
        """The row of a run that raised; a row that cannot be written is a warning (the
        run's own error is the one reported)."""
        import logging

        try:
            self.write("failed", model, revision, settings)
        except Exception as e:  # noqa: BLE001 - never hide the training's error
            logging.getLogger("clinicalbert_spark.pretrain").warning(
                "runs row not written (%s)", type(e).__name__)
