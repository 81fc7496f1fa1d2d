"""One fine-tuning process (pure torch; no Spark): the same launch as pretraining.

:func:`train` runs alone or in every process of a ``TorchDistributor`` launch (DDP over gloo
on CPU, NCCL on GPU; :mod:`clinicalbert_spark.pretrain.ddp`). An epoch is
``ceil(windows / batch_size)`` optimizer steps; step ``t`` takes positions ``t*B … t*B+B-1`` of
the endless sequence of per-epoch permutations (seeded by ``seed + epoch``), process ``r`` of
``W`` its slice, as in pretraining. After every epoch the validation windows are scored
(loss and accuracy, summed over the processes); the weights of the epoch with the lowest
validation loss are kept, and training stops after ``patience`` epochs without a lower one.
Rank 0 writes those weights (safetensors), the config with ``id2label``/``label2id`` and the
tokenizer to ``save_to``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..pretrain.ddp import Process, accumulated_step, adamw, micro_batch, start_process
from ..pretrain.train import global_indices
from .data import IGNORE, Examples

log = logging.getLogger("clinicalbert_spark.finetune")

TASKS = ("sequence-classification", "token-classification")


@dataclass
class FinetuneSettings:
    save_to: str  # folder the best checkpoint is written to (rank 0)
    model: str  # local folder of the starting checkpoint
    task: str
    labels: list  # label names, in id order
    max_length: int = 128
    stride: Optional[int] = None
    long_policy: str = "truncate"
    max_epochs: int = 10
    patience: int = 2  # epochs without a lower validation loss before stopping
    batch_size: int = 16  # sequences per optimizer step, all processes together
    grad_accum: int = 1
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    adam_eps: float = 1e-8
    seed: int = 42
    bf16: str = "auto"
    threads: Optional[int] = None
    eval_batch: int = 64
    log_every: int = 50  # optimizer steps between progress lines

    def check(self) -> None:
        problems = []
        if self.task not in TASKS:
            problems.append(f"task must be one of {TASKS}")
        if len(self.labels) < 2:
            problems.append("at least two labels are needed")
        if not 8 <= self.max_length <= 512:
            problems.append("max_length must be in [8, 512]")
        if self.stride is not None and not 0 <= self.stride < self.max_length - 2:
            problems.append("stride must be in [0, max_length - 2)")
        if self.long_policy not in ("window", "truncate"):
            problems.append("long_policy must be window or truncate")
        if self.max_epochs < 1 or self.patience < 1 or self.log_every < 1:
            problems.append("max_epochs, patience and log_every must be >= 1")
        if self.batch_size < 1 or self.grad_accum < 1:
            problems.append("batch_size and grad_accum must be >= 1")
        if not 0 <= self.warmup_ratio < 1:
            problems.append("warmup_ratio must be in [0, 1)")
        if self.bf16 not in ("auto", "on", "off"):
            problems.append("bf16 must be auto, on or off")
        if problems:
            raise ValueError("; ".join(problems))


def load_for_training(path: str, task: str, labels: list):
    """(model with a fresh ``task`` head of ``labels``, fast tokenizer) from a local folder:
    safetensors preferred, a pickle read weights-only, never remote code. A head the
    checkpoint already has is replaced when its size differs."""
    from transformers import AutoConfig, AutoTokenizer

    from ..encode.errors import ModelLoadError
    from ..encode.model import _auto_class, _from_pretrained, _ignorable_missing

    config = AutoConfig.from_pretrained(
        path, trust_remote_code=False, local_files_only=True, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    config.problem_type = "single_label_classification" if task == TASKS[0] else None
    model, info = _from_pretrained(_auto_class(task), Path(path), config,
                                   ignore_mismatched_sizes=True)
    prefix = getattr(model, "base_model_prefix", "") + "."
    missing = [k for k in info.get("missing_keys", ()) if k.startswith(prefix)
               and not _ignorable_missing(k[len(prefix):])]
    if missing:
        raise ModelLoadError(f"checkpoint {path} lacks {len(missing)} encoder weights (e.g. "
                             f"{missing[:3]}); refusing to fine-tune randomly initialised layers")
    tok = AutoTokenizer.from_pretrained(path, use_fast=True, trust_remote_code=False,
                                        local_files_only=True)
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(f"tokenizer in {path} is not a fast tokenizer (offsets are "
                             "required)")
    return model, tok


def _batch(ex: Examples, idx: np.ndarray, pad_id: int, task: str, device) -> dict:
    """Right-padded tensors of windows ``idx`` (padding: ``pad_id``, label ``IGNORE``)."""
    import torch

    from ..encode.batching import collate

    ids, mask = collate(ex.ids, idx, pad_id, 1)
    if task == TASKS[0]:
        labels = np.asarray([ex.labels[i] for i in idx], dtype=np.int64)
    else:
        labels = np.full(ids.shape, IGNORE, dtype=np.int64)
        for r, i in enumerate(idx):
            labels[r, :len(ex.labels[i])] = ex.labels[i]
    return {"input_ids": torch.from_numpy(ids).to(device),
            "attention_mask": torch.from_numpy(mask).to(device),
            "labels": torch.from_numpy(labels).to(device)}


def evaluate(model, ex: Examples, proc: Process, batch: int, pad_id: int, task: str) -> dict:
    """Validation loss (per window, or per labelled token) and accuracy over this split's
    windows, summed over the processes."""
    import torch
    import torch.nn.functional as Fn

    core = model.module if hasattr(model, "module") else model
    core.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=proc.device)  # loss, correct, count
    order = np.argsort([len(x) for x in ex.ids], kind="stable")  # similar lengths batch well
    mine = order[proc.rank::proc.world]
    with torch.no_grad():
        for s in range(0, len(mine), batch):
            b = _batch(ex, mine[s:s + batch], pad_id, task, proc.device)
            with proc.autocast():
                logits = core(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            logits, labels = logits.float(), b["labels"]
            if task != TASKS[0]:
                keep = labels != IGNORE
                logits, labels = logits[keep], labels[keep]
            sums[0] += Fn.cross_entropy(logits, labels, reduction="sum").double()
            sums[1] += (logits.argmax(-1) == labels).sum().double()
            sums[2] += labels.numel()
    proc.all_sum(sums)
    core.train()
    n = max(sums[2].item(), 1.0)
    return {"loss": sums[0].item() / n, "accuracy": sums[1].item() / n,
            "count": int(sums[2].item())}


def train(settings: dict | FinetuneSettings, data: dict) -> dict:
    """Fine-tune; ``data``: ``{"train": Examples, "validation": Examples}``. Returns the
    training summary, the same in every process (losses and counts are all-reduced; only the
    seconds are each process's own)."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    s = settings if isinstance(settings, FinetuneSettings) else FinetuneSettings(**settings)
    s.check()
    tr, va = data["train"], data["validation"]
    if len(tr) == 0 or len(va) == 0:
        raise ValueError("the train and validation splits need at least one window each")
    proc = start_process(s.threads, s.bf16)
    micro = micro_batch(s.batch_size, proc.world, s.grad_accum)
    torch.manual_seed(s.seed)  # the same fresh head on every rank
    model, tok = load_for_training(s.model, s.task, s.labels)
    model.to(proc.device).train()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    per_epoch = math.ceil(len(tr) / s.batch_size)
    total = per_epoch * s.max_epochs
    opt = adamw(model, s.lr, s.weight_decay, s.adam_eps)
    sched = get_linear_schedule_with_warmup(opt, int(s.warmup_ratio * total), total)
    ddp = proc.wrap(model)
    torch.manual_seed(s.seed + 1000 + proc.rank)  # dropout streams differ per rank

    def loss_of(b):
        with proc.autocast():
            return ddp(**b).loss.float()

    history: list[dict] = []
    best_loss, best_epoch, best_state = math.inf, -1, None
    before = evaluate(model, va, proc, s.eval_batch, pad_id, s.task)
    t0, tokens, step = time.perf_counter(), 0, 0
    stopped_early = False
    for epoch in range(s.max_epochs):
        losses = []
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            g = global_indices(step, s.batch_size, len(tr), s.seed)
            batches = [_batch(tr, g[(a * proc.world + proc.rank) * micro:
                                    (a * proc.world + proc.rank + 1) * micro],
                              pad_id, s.task, proc.device) for a in range(s.grad_accum)]
            tokens += sum(int(b["attention_mask"].sum()) for b in batches)
            losses.append(accumulated_step(proc, ddp, model, batches, loss_of, opt, sched,
                                           s.max_grad_norm))
            if proc.rank == 0 and (step + 1) % s.log_every == 0:
                log.info("step %d/%d loss %.4f (%.0f s)", step + 1, total,
                         float(np.mean(losses[-s.log_every:])), time.perf_counter() - t0)
        val = evaluate(model, va, proc, s.eval_batch, pad_id, s.task)
        history.append({"epoch": epoch + 1, "steps": (epoch + 1) * per_epoch,
                        "train_loss": round(float(np.mean(losses)), 6),
                        "validation_loss": round(val["loss"], 6),
                        "validation_accuracy": round(val["accuracy"], 6)})
        if proc.rank == 0:
            log.info("epoch %d/%d train loss %.4f validation loss %.4f accuracy %.4f",
                     epoch + 1, s.max_epochs, history[-1]["train_loss"], val["loss"],
                     val["accuracy"])
        if val["loss"] < best_loss:
            best_loss, best_epoch = val["loss"], epoch + 1
            if proc.rank == 0:
                best_state = {k: v.detach().to("cpu", copy=True)
                              for k, v in model.state_dict().items()}
        elif epoch + 1 - best_epoch >= s.patience:
            stopped_early = epoch + 1 < s.max_epochs
            break
    secs = time.perf_counter() - t0
    tokens = proc.total(tokens)
    if best_epoch < 0:
        raise ValueError("the validation loss was never finite (lower --lr?)")
    if proc.rank == 0:
        model.load_state_dict(best_state)
        out = Path(s.save_to)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
    summary = {
        "settings": asdict(s), "processes": proc.world, "micro_batch": micro,
        "device": "cuda" if proc.cuda else "cpu", "bf16": proc.bf16,
        "steps_per_epoch": per_epoch, "epochs_run": len(history), "best_epoch": best_epoch,
        "stopped_early": stopped_early, "train_windows": len(tr), "validation_windows": len(va),
        "validation_before": before, "history": history, "train_seconds": round(secs, 2),
        "tokens": tokens, "tokens_per_s": round(tokens / max(secs, 1e-9), 1),
    }
    proc.finish()
    return summary

