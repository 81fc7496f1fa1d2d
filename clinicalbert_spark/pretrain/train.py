"""Continued masked-LM pretraining on an instances table (pure torch; no Spark).

:func:`train` runs in one process or in every process of a ``torchrun`` /
``TorchDistributor`` launch (``RANK``/``WORLD_SIZE`` in the environment: DDP over gloo on CPU,
NCCL on GPU). Everything that decides the loss curve is a function of the settings and the
step number, so a run resumed from a checkpoint continues the same curve:

* data order: the training instances sorted by (note, copy, instance), shuffled per epoch by
  ``seed + epoch``; optimizer step ``t`` takes global positions ``t*B .. (t+1)*B - 1`` of that
  endless sequence, rank ``r`` micro-step ``a`` the ``(a*W + r)``-th slice of it;
* checkpoints (``<output>/checkpoint-<step>/``) hold the model as safetensors, the optimizer and
  scheduler state, every rank's RNG state and the loss history;
* the held-out split is by note (a hash of the note id), so no note is in both.

The MLM head runs only at the masked positions (as BERT's ``gather_indexes``), not on all 128.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .ddp import Process, accumulated_step, adamw, micro_batch, start_process

log = logging.getLogger("clinicalbert_spark.pretrain")

CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainSettings:
    instances: str
    output: str
    model: str
    max_steps: int = 150_000
    batch_size: int = 32  # sequences per optimizer step, all processes together
    grad_accum: int = 1
    lr: float = 5e-5
    warmup_steps: Optional[int] = None  # None: min(10000, 10% of max_steps)
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    adam_eps: float = 1e-6
    save_every: int = 10_000
    log_every: int = 100
    heldout_fraction: float = 0.01
    eval_instances: int = 2_000
    seed: int = 42
    bf16: str = "auto"  # auto: on GPU only; "on", "off"
    resume: bool = True
    stop_at_step: Optional[int] = None  # stop early (the schedule still spans max_steps)
    threads: Optional[int] = None  # torch threads per process (CPU)
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        problems = []
        if self.max_steps < 1:
            problems.append("max_steps must be >= 1")
        if self.batch_size < 1 or self.grad_accum < 1:
            problems.append("batch_size and grad_accum must be >= 1")
        if not 0 <= self.heldout_fraction < 1:
            problems.append("heldout_fraction must be in [0, 1)")
        if self.save_every < 1 or self.log_every < 1:
            problems.append("save_every and log_every must be >= 1")
        if self.bf16 not in ("auto", "on", "off"):
            problems.append("bf16 must be auto, on or off")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(10_000, self.max_steps // 10)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Arrays:
    ids: np.ndarray  # [N, L] int32, 0-padded
    types: np.ndarray  # [N, L] int8
    lengths: np.ndarray  # [N] int32
    positions: np.ndarray  # [N, P] int32, -1 padded
    labels: np.ndarray  # [N, P] int32

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, idx: np.ndarray) -> "Arrays":
        return Arrays(self.ids[idx], self.types[idx], self.lengths[idx], self.positions[idx],
                      self.labels[idx])


def heldout_note(note_id: str, fraction: float) -> bool:
    h = hashlib.sha256(note_id.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < fraction


def load_instances(path: str, heldout_fraction: float, pad_id: int = 0
                   ) -> tuple[Arrays, Arrays]:
    """(train, held-out) arrays of an instances table, in a partitioning-free order.

    Held-out notes contribute their copy 0 only (the other copies are the same text)."""
    import pyarrow.dataset as ds

    cols = ["note_id", "copy", "instance_index", "input_ids", "token_type_ids", "length",
            "masked_positions", "masked_ids"]
    t = ds.dataset(path, format="parquet").to_table(columns=cols)
    if t.num_rows == 0:
        raise ValueError(f"the instances table {path} is empty")
    d = t.to_pydict()
    order = sorted(range(t.num_rows),
                   key=lambda i: (d["note_id"][i], d["copy"][i], d["instance_index"][i]))
    L = max(d["length"])
    P = max(1, max(len(p) for p in d["masked_positions"]))
    n = len(order)
    ids = np.full((n, L), pad_id, dtype=np.int32)
    types = np.zeros((n, L), dtype=np.int8)
    pos = np.full((n, P), -1, dtype=np.int32)
    lab = np.full((n, P), -100, dtype=np.int32)
    held = np.zeros(n, dtype=bool)
    keep = np.ones(n, dtype=bool)
    cache: dict[str, bool] = {}
    for j, i in enumerate(order):
        x = d["input_ids"][i]
        ids[j, :len(x)] = x
        types[j, :len(x)] = d["token_type_ids"][i]
        p = d["masked_positions"][i]
        pos[j, :len(p)] = p
        lab[j, :len(p)] = d["masked_ids"][i]
        nid = d["note_id"][i]
        h = cache.get(nid)
        if h is None:
            h = cache[nid] = heldout_note(nid, heldout_fraction)
        held[j] = h
        keep[j] = (not h) or d["copy"][i] == 0
    lengths = np.asarray([d["length"][i] for i in order], dtype=np.int32)
    arr = Arrays(ids, types, lengths, pos, lab)
    tr = np.flatnonzero(~held)
    ho = np.flatnonzero(held & keep)
    if len(tr) == 0:
        raise ValueError("no training instances left after the held-out split")
    return arr.take(tr), arr.take(ho)


def global_indices(step: int, batch: int, n: int, seed: int) -> np.ndarray:
    """Instance indices of optimizer step ``step`` (0-based): a slice of the endless sequence
    of per-epoch permutations."""
    start, end = step * batch, (step + 1) * batch
    out = []
    pos = start
    while pos < end:
        epoch, off = divmod(pos, n)
        perm = np.random.default_rng(seed + epoch).permutation(n)
        take = min(end - pos, n - off)
        out.append(perm[off:off + take])
        pos += take
    return np.concatenate(out)


def to_batch(a: Arrays, device):
    import torch

    L = int(a.lengths.max())
    ids = torch.from_numpy(a.ids[:, :L].astype(np.int64)).to(device)
    types = torch.from_numpy(a.types[:, :L].astype(np.int64)).to(device)
    att = (torch.arange(L)[None, :] < torch.from_numpy(a.lengths.astype(np.int64))[:, None])
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": att.long().to(device),
            "positions": torch.from_numpy(a.positions.astype(np.int64)).to(device),
            "labels": torch.from_numpy(a.labels.astype(np.int64)).to(device)}


# ---------------------------------------------------------------------------------------------
# Model


def mlm_logits(model, batch):
    """(logits at the masked positions [M, V], labels [M])."""
    import torch

    core = model.module if hasattr(model, "module") else model
    pos, labels = batch["positions"], batch["labels"]
    sel = pos >= 0
    if hasattr(core, "bert") and hasattr(core, "cls"):
        hidden = core.bert(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                           attention_mask=batch["attention_mask"]).last_hidden_state
        rows = torch.arange(pos.shape[0], device=pos.device)[:, None].expand_as(pos)[sel]
        gathered = hidden[rows, pos[sel]]
        return core.cls(gathered), labels[sel]
    full = torch.full_like(batch["input_ids"], -100)
    rows = torch.arange(pos.shape[0], device=pos.device)[:, None].expand_as(pos)[sel]
    full[rows, pos[sel]] = labels[sel]
    out = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                attention_mask=batch["attention_mask"]).logits
    keep = full >= 0
    return out[keep], full[keep]


def evaluate(model, data: Arrays, proc: Process, batch: int) -> dict:
    """Held-out masked-token loss and accuracy (sums all-reduced over the processes)."""
    import torch
    import torch.nn.functional as Fn

    core = model.module if hasattr(model, "module") else model
    core.eval()
    loss_sum = torch.zeros(3, dtype=torch.float64, device=proc.device)  # loss, correct, count
    idx = np.arange(proc.rank, len(data), proc.world)
    with torch.no_grad():
        for s in range(0, len(idx), batch):
            b = to_batch(data.take(idx[s:s + batch]), proc.device)
            with proc.autocast():
                logits, labels = mlm_logits(core, b)
            logits = logits.float()
            loss_sum[0] += Fn.cross_entropy(logits, labels, reduction="sum").double()
            loss_sum[1] += (logits.argmax(-1) == labels).sum().double()
            loss_sum[2] += labels.numel()
    proc.all_sum(loss_sum)
    core.train()
    n = max(loss_sum[2].item(), 1.0)
    return {"loss": loss_sum[0].item() / n, "accuracy": loss_sum[1].item() / n,
            "masked_tokens": int(loss_sum[2].item()), "instances": len(data)}


# ---------------------------------------------------------------------------------------------
# Checkpoints


def latest_checkpoint(output: str) -> Optional[Path]:
    out = Path(output)
    if not out.is_dir():
        return None
    found = []
    for p in out.glob(CHECKPOINT_PREFIX + "*"):
        tail = p.name[len(CHECKPOINT_PREFIX):]
        if tail.isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(tail), p))
    return max(found)[1] if found else None


def save_checkpoint(path: Path, model, tokenizer, optimizer, scheduler, state: dict,
                    proc: Process) -> None:
    import torch

    rank = proc.rank
    if rank == 0:
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        core = model.module if hasattr(model, "module") else model
        core.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    proc.barrier()
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               tmp / f"rng_rank{rank}.pt")
    proc.barrier()
    if rank == 0:  # trainer_state.json last: its presence marks a complete checkpoint
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        if path.exists():
            import shutil

            shutil.rmtree(path)
        tmp.rename(path)
    proc.barrier()


def train(settings: dict | TrainSettings) -> dict:
    """Train; returns the run summary (also written to ``<output>/run_summary.json``)."""
    import torch
    import torch.nn.functional as Fn
    from transformers import AutoModelForMaskedLM, AutoTokenizer, get_linear_schedule_with_warmup

    s = settings if isinstance(settings, TrainSettings) else TrainSettings(**settings)
    s.check()
    proc = start_process(s.threads, s.bf16)
    rank, world, device = proc.rank, proc.world, proc.device
    per_step = s.batch_size
    micro = micro_batch(per_step, world, s.grad_accum)

    out = Path(s.output)
    ckpt = latest_checkpoint(s.output) if s.resume else None
    tok = AutoTokenizer.from_pretrained(str(ckpt) if ckpt else s.model)
    train_data, heldout = load_instances(s.instances, s.heldout_fraction, tok.pad_token_id or 0)
    if s.eval_instances and len(heldout) > s.eval_instances:
        heldout = heldout.take(np.arange(s.eval_instances))

    torch.manual_seed(s.seed)  # the same fresh head on every rank
    model = AutoModelForMaskedLM.from_pretrained(str(ckpt) if ckpt else s.model).to(device)
    model.train()
    opt = adamw(model, s.lr, s.weight_decay, s.adam_eps)
    sched = get_linear_schedule_with_warmup(opt, s.warmup, s.max_steps)
    state = {"step": 0, "losses": [], "heldout_before": None, "seconds": 0.0, "tokens": 0}
    if ckpt is not None:
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True,
                                       map_location=device))
        sched.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        rng = torch.load(ckpt / f"rng_rank{rank}.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if proc.cuda and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
    ddp = proc.wrap(model)
    eval_batch = max(micro, 32)
    if state["heldout_before"] is None:
        state["heldout_before"] = evaluate(model, heldout, proc, eval_batch)
    if ckpt is None:
        torch.manual_seed(s.seed + 1000 + rank)  # dropout streams differ per rank
    stop = min(s.max_steps, s.stop_at_step or s.max_steps)
    t0 = time.perf_counter()
    start_step = state["step"]
    tokens = 0
    window: list[float] = []

    def loss_of(b):
        with proc.autocast():
            logits, labels = _ddp_logits(ddp, model, b)
        return Fn.cross_entropy(logits.float(), labels)

    for step in range(start_step, stop):
        g = global_indices(step, per_step, len(train_data), s.seed)
        batches = [to_batch(train_data.take(g[(a * world + rank) * micro:
                                              (a * world + rank + 1) * micro]), device)
                   for a in range(s.grad_accum)]
        tokens += sum(int(b["attention_mask"].sum()) for b in batches)
        step_loss = accumulated_step(proc, ddp, model, batches, loss_of, opt, sched,
                                     s.max_grad_norm)
        state["losses"].append([step + 1, round(step_loss, 6)])
        window.append(step_loss)
        state["step"] = step + 1
        if rank == 0 and ((step + 1) % s.log_every == 0 or step + 1 == stop):
            log.info("step %d/%d loss %.4f lr %.2e", step + 1, s.max_steps,
                     sum(window) / len(window), sched.get_last_lr()[0])
            window = []
        if (step + 1) % s.save_every == 0 or step + 1 == stop:
            state["seconds"] = state.get("seconds", 0.0) + time.perf_counter() - t0
            state["tokens"] = state.get("tokens", 0) + proc.total(tokens)
            t0, tokens = time.perf_counter(), 0
            save_checkpoint(out / f"{CHECKPOINT_PREFIX}{step + 1}", ddp, tok, opt, sched,
                            state, proc)
    after = evaluate(model, heldout, proc, eval_batch)
    secs = state.get("seconds", 0.0) + time.perf_counter() - t0
    toks = state.get("tokens", 0) + proc.total(tokens)
    summary = {
        "settings": {k: v for k, v in asdict(s).items() if k != "extra"},
        "warmup_steps": s.warmup, "processes": world, "micro_batch": micro,
        "device": "cuda" if proc.cuda else "cpu", "bf16": proc.bf16,
        "resumed_from": str(ckpt) if ckpt else None, "steps": state["step"],
        "finished": state["step"] >= s.max_steps,
        "train_instances": len(train_data), "heldout_instances": len(heldout),
        "heldout_before": state["heldout_before"], "heldout_after": after,
        "train_seconds": round(secs, 2), "tokens": toks,
        "tokens_per_s": round(toks / max(secs, 1e-9), 1),
        "losses": state["losses"],
        "checkpoint": str(out / f"{CHECKPOINT_PREFIX}{state['step']}"),
    }
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_summary.json").write_text(json.dumps(summary, indent=1))
    proc.finish()
    return summary


def _ddp_logits(ddp, model, batch):
    """Masked-position logits through the DDP wrapper (so that its gradient hooks fire)."""
    if ddp is model:
        return mlm_logits(model, batch)
    return _forward_ddp(ddp, batch)


def _forward_ddp(ddp, batch):
    # DDP hooks fire on parameters used in ddp.forward: run the full model's forward with a
    # gathered-position head by temporarily swapping in a forward that does exactly that.
    core = ddp.module
    original = core.forward

    def gathered_forward(*args, **kwargs):
        return mlm_logits(core, batch)

    core.forward = gathered_forward
    try:
        return ddp()
    finally:
        core.forward = original

