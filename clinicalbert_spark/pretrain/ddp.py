"""What every training process needs, pretraining and fine-tuning alike (pure torch; no Spark).

A training function runs in one process or in every process of a ``torchrun`` /
``TorchDistributor`` launch (which hands back the result of whichever process finishes last,
so every process must return the same summary: sums are all-reduced) (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment):
:func:`start_process` picks the device (``cuda:<local rank>`` when CUDA is there), joins the
process group (NCCL on GPU, gloo on CPU) and decides bf16; :func:`adamw` builds BERT's
optimizer (no weight decay on biases and LayerNorm); :func:`accumulated_step` runs one
optimizer step over micro-batches with DDP's gradient sync only on the last one and returns
the loss averaged over the processes.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")


@dataclass
class Process:
    rank: int
    world: int
    local_rank: int
    device: Any  # torch.device
    cuda: bool
    bf16: bool

    def autocast(self):
        """bf16 autocast on this process's device when ``bf16``, else a no-op."""
        if not self.bf16:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_sum(self, tensor) -> None:
        """Sum ``tensor`` over the processes, in place."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)

    def total(self, n: int) -> int:
        """The sum of ``n`` over the processes (every process gets it)."""
        if self.world == 1:
            return int(n)
        import torch

        t = torch.tensor([int(n)], dtype=torch.int64, device=self.device)
        self.all_sum(t)
        return int(t.item())

    def finish(self) -> None:
        """Wait for every process, then leave the process group."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()

    def wrap(self, model):
        """``model`` in DistributedDataParallel when there are several processes."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.local_rank] if self.cuda else None)


def dist_env() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def start_process(threads: int | None = None, bf16: str = "auto") -> Process:
    """This process's place in the launch; joins the process group when there are several.

    ``bf16``: ``auto`` (on GPU only), ``on`` (CPU too) or ``off``."""
    import torch

    rank, world, local_rank = dist_env()
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if threads:
        torch.set_num_threads(threads)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
    return Process(rank, world, local_rank, device, cuda, bf16 == "on" or (bf16 == "auto" and cuda))


def micro_batch(batch_size: int, world: int, grad_accum: int) -> int:
    """Sequences per process and micro-step of an optimizer step of ``batch_size``."""
    if batch_size % (world * grad_accum):
        raise ValueError(f"batch_size {batch_size} is not a multiple of processes ({world}) x "
                         f"grad_accum ({grad_accum})")
    return batch_size // (world * grad_accum)


def adamw(model, lr: float, weight_decay: float, eps: float = 1e-6):
    """AdamW (betas 0.9/0.999) with no weight decay on biases and LayerNorm weights."""
    import torch

    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not any(k in n for k in NO_DECAY)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in named if any(k in n for k in NO_DECAY)],
         "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, eps=eps)


def accumulated_step(proc: Process, ddp, model, batches: Sequence[dict],
                     loss_of: Callable[[dict], Any], optimizer, scheduler,
                     max_grad_norm: float) -> float:
    """One optimizer step over ``batches`` (this process's micro-batches): gradients
    accumulate locally and are synchronised by DDP on the last micro-batch only; the norm is
    clipped to ``max_grad_norm``. ``loss_of(batch)`` runs the forward pass through ``ddp``
    (so that DDP's hooks fire) and returns the batch's mean loss. Returns the step's loss
    averaged over the processes."""
    import torch

    n = len(batches)
    step_loss = torch.zeros((), device=proc.device)
    for a, b in enumerate(batches):
        sync = contextlib.nullcontext() if (ddp is model or a == n - 1) else ddp.no_sync()
        with sync:
            loss = loss_of(b) / n
            loss.backward()
        step_loss += loss.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if proc.world > 1:
        proc.all_sum(step_loss)
        step_loss /= proc.world
    return float(step_loss)


def run_logged(train: Callable, *args):
    """``train(*args)`` with INFO logging to stderr: what ``TorchDistributor.run`` starts in
    each process (module level, so that it pickles)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return train(*args)
