#!/usr/bin/env python
"""Masked-LM training step throughput of a BERT-base-sized model (the cost of Bio_ClinicalBERT).

    python benchmarks/pretraining_step_bench.py [--batch 32] [--steps 5] [--device cuda]
                                                [--bf16] [--peak-tflops 989] [--json out.json]

Randomly initialised BertForMaskedLM (BertConfig(): 12 layers, 768 hidden, vocab 30,522), the
same training step as jobs/pretrain.py (AdamW, MLM head at the 20 masked positions only,
gradient clipping), on synthetic full-length instances (128 tokens, 20 predictions). Reports
tokens/s, seconds per step of the recipe's batch, and model FLOP utilisation (MFU) against
--peak-tflops (H100 SXM dense bf16: 989). FLOPs per token: 6 x (non-embedding parameters) +
12 x layers x hidden x sequence length (attention), the forward+backward estimate of
Kaplan et al. / PaLM, plus 6 x hidden x vocab x (20 / 128) for the gathered MLM head.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def flops_per_token(cfg, seq: int, preds: int) -> float:
    h, n_layers = cfg.hidden_size, cfg.num_hidden_layers
    per_layer = 4 * h * h + 2 * h * cfg.intermediate_size  # attention projections + MLP
    dense = 6 * n_layers * per_layer + 12 * n_layers * h * seq
    head = 6 * (h * h + h * cfg.vocab_size) * preds / seq
    return dense + head


def main(argv=None) -> int:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from clinicalbert_spark.pretrain.train import mlm_logits

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--preds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    cfg = BertConfig()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = BertForMaskedLM(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (a.batch, a.seq), generator=g)
    pos = torch.stack([torch.randperm(a.seq - 2, generator=g)[:a.preds] + 1
                       for _ in range(a.batch)]).sort(1).values
    batch = {"input_ids": ids.to(dev), "token_type_ids": torch.zeros_like(ids).to(dev),
             "attention_mask": torch.ones_like(ids).to(dev), "positions": pos.to(dev),
             "labels": torch.gather(ids, 1, pos).to(dev)}
    import contextlib

    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.bf16 \
        else contextlib.nullcontext

    def step():
        with ctx():
            logits, labels = mlm_logits(model, batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = (time.perf_counter() - t0) / a.steps
    tok_s = a.batch * a.seq / secs
    fpt = flops_per_token(cfg, a.seq, a.preds)
    res = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "batch": a.batch, "seq": a.seq,
           "bf16": a.bf16, "seconds_per_step": round(secs, 4),
           "seconds_per_recipe_step": round(secs * 32 / a.batch, 4),
           "tokens_per_s": round(tok_s, 1), "gflop_per_token": round(fpt / 1e9, 3),
           "achieved_tflops": round(tok_s * fpt / 1e12, 3)}
    if a.peak_tflops:
        res["mfu"] = round(tok_s * fpt / (a.peak_tflops * 1e12), 4)
    for k, v in res.items():
        print(f"{k:26s}{v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
