"""spark-submit jobs/pretrain.py --instances PATH --model M --output DIR [--max-steps 150000]

Continued masked-LM pretraining from any BERT checkpoint on an instances table written by
jobs/make_pretraining_data.py, with the Bio_ClinicalBERT recipe's defaults (batch 32, lr 5e-5,
linear warmup + decay), safetensors checkpoints every --save-every steps under DIR and exact
resume from the latest one. --processes N > 1 trains with pyspark's TorchDistributor (gloo on
CPU, NCCL on GPU; --cluster to spread over the executors instead of the driver). Held-out
masked-token loss and accuracy before and after go to DIR/run_summary.json (docs/training.md).
"""
from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instances", required=True)
    p.add_argument("--model", required=True, help="starting checkpoint (folder or hub id)")
    p.add_argument("--revision")
    p.add_argument("--output", required=True, help="checkpoints and run_summary.json")
    p.add_argument("--max-steps", type=int, default=150_000)
    p.add_argument("--batch-size", type=int, default=32, help="sequences per optimizer step")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="default min(10000, 10%% of --max-steps)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--save-every", type=int, default=10_000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--heldout-fraction", type=float, default=0.01,
                   help="share of notes held out (by a hash of the note id)")
    p.add_argument("--eval-instances", type=int, default=2000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints under --output")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="stop there (the schedule still spans --max-steps); resume later")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--cluster", action="store_true",
                   help="TorchDistributor on the executors (default: on the driver)")
    p.add_argument("--gpu", action="store_true", help="one GPU per process (TorchDistributor)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--master", default=None)
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
    from clinicalbert_spark.pretrain.train import TrainSettings, distributed_main, train

    instances, output = io.absolute(a.instances), io.absolute(a.output)
    if "://" not in instances and not Path(instances).exists():
        raise InputError(f"input not found: {instances}")
    if a.processes < 1:
        raise ConfigError("--processes must be >= 1")
    s = settings_of(a, preflight(a.model, a.revision), instances, output)
    try:
        TrainSettings(**s).check()
    except ValueError as e:
        raise ConfigError(f"invalid settings: {e}") from None
    if a.batch_size % (a.processes * a.grad_accum):
        raise ConfigError(f"--batch-size {a.batch_size} must be a multiple of --processes x "
                          f"--grad-accum ({a.processes * a.grad_accum})")
    if a.processes == 1 and not a.cluster:
        summary = train(s)
    else:
        from pyspark.ml.torch.distributor import TorchDistributor

        from clinicalbert_spark.config import SparkConfig
        from clinicalbert_spark.spark.session import get_spark

        get_spark(SparkConfig(master=a.master, app_name="pretrain"))
        if a.threads is None and not a.gpu:
            s["threads"] = 1
        summary = TorchDistributor(num_processes=a.processes, local_mode=not a.cluster,
                                   use_gpu=a.gpu).run(distributed_main, s)
    b, f = summary["heldout_before"], summary["heldout_after"]
    print_summary("pretrain summary", {
        "steps": f"{summary['steps']} of {a.max_steps}", "processes": summary["processes"],
        "device": summary["device"] + (" (bf16)" if summary["bf16"] else ""),
        "held-out loss": f"{b['loss']:.4f} -> {f['loss']:.4f}",
        "held-out accuracy": f"{b['accuracy']:.4f} -> {f['accuracy']:.4f}",
        "tokens/s": summary["tokens_per_s"], "checkpoint": summary["checkpoint"],
        "run summary": f"{output}/run_summary.json"})
    return 0


def main(argv=None) -> int:
    from clinicalbert_spark.pretrain.cli import run_main

    return run_main(body, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
