"""spark-submit jobs/pretrain.py --instances PATH --model M --output DIR [--max-steps 150000]

Continued masked-LM pretraining from any BERT checkpoint on an instances table written by
jobs/make_pretraining_data.py, with the Bio_ClinicalBERT recipe's defaults (batch 32, lr 5e-5,
linear warmup + decay), safetensors checkpoints every --save-every steps under DIR and exact
resume from the latest one. --processes N > 1 trains with pyspark's TorchDistributor (gloo on
CPU, NCCL on GPU; --cluster to spread over the executors instead of the driver). Held-out
masked-token loss and accuracy before and after go to DIR/run_summary.json and, with
--runs-root ROOT, to a row of the runs table under ROOT (docs/training.md).
"""
from __future__ import annotations

import argparse
import sys

from clinicalbert_spark.pretrain.cli import add_training_args


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instances", required=True)
    p.add_argument("--model", required=True, help="starting checkpoint (folder or hub id)")
    p.add_argument("--revision")
    p.add_argument("--output", required=True, help="checkpoints and run_summary.json")
    p.add_argument("--max-steps", type=int, default=150_000)
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="default min(10000, 10%% of --max-steps)")
    p.add_argument("--save-every", type=int, default=10_000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--heldout-fraction", type=float, default=0.01,
                   help="share of notes held out (by a hash of the note id)")
    p.add_argument("--eval-instances", type=int, default=2000)
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints under --output")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="stop there (the schedule still spans --max-steps); resume later")
    add_training_args(p, batch_size=32, lr=5e-5)
    return p


def settings_of(a: argparse.Namespace, model_path: str, instances: str, output: str) -> dict:
    return dict(instances=instances, output=output, model=model_path, max_steps=a.max_steps,
                batch_size=a.batch_size, grad_accum=a.grad_accum, lr=a.lr,
                warmup_steps=a.warmup_steps, weight_decay=a.weight_decay,
                save_every=a.save_every, log_every=a.log_every,
                heldout_fraction=a.heldout_fraction, eval_instances=a.eval_instances,
                seed=a.seed, bf16=a.bf16, resume=not a.no_resume, stop_at_step=a.stop_at_step,
                threads=a.threads)


def body(a: argparse.Namespace) -> int:
    from pathlib import Path

    from clinicalbert_spark import io
    from clinicalbert_spark.commands import print_summary
    from clinicalbert_spark.errors import ConfigError, InputError
    from clinicalbert_spark.models import preflight
    from clinicalbert_spark.pretrain.cli import RunRecord, check_launch, launch
    from clinicalbert_spark.pretrain.train import TrainSettings, train

    instances, output = io.absolute(a.instances), io.absolute(a.output)
    if "://" not in instances and not Path(instances).exists():
        raise InputError(f"input not found: {instances}")
    check_launch(a)
    s = settings_of(a, preflight(a.model, a.revision), instances, output)
    try:
        TrainSettings(**s).check()
    except ValueError as e:
        raise ConfigError(f"invalid settings: {e}") from None
    record = RunRecord(a, "pretrain")
    try:
        summary = launch(train, a, "pretrain", s)
    except BaseException:
        record.write_failed(a.model, a.revision, s)
        raise
    b, f = summary["heldout_before"], summary["heldout_after"]
    row = record.write(
        "succeeded", a.model, a.revision, s,
        checkpoint={"path": summary["checkpoint"], "fingerprint": None,
                    "settings": summary["settings"],
                    "metrics": {"heldout_before": b, "heldout_after": f,
                                "steps": summary["steps"], "finished": summary["finished"]}},
        input_records=summary["train_instances"] + summary["heldout_instances"],
        tokens=summary["tokens"], seconds=summary["train_seconds"])
    print_summary("pretrain summary", {
        "steps": f"{summary['steps']} of {a.max_steps}", "processes": summary["processes"],
        "device": summary["device"] + (" (bf16)" if summary["bf16"] else ""),
        "held-out loss": f"{b['loss']:.4f} -> {f['loss']:.4f}",
        "held-out accuracy": f"{b['accuracy']:.4f} -> {f['accuracy']:.4f}",
        "tokens/s": summary["tokens_per_s"], "checkpoint": summary["checkpoint"],
        "run summary": f"{output}/run_summary.json",
        **({"runs row": f"{record.root}/runs (run id {row['run_id']})"} if row else {})})
    return 0


def main(argv=None) -> int:
    from clinicalbert_spark.pretrain.cli import run_main

    return run_main(body, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
