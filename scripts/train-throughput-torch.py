#!/usr/bin/env python3
"""PyTorch's training throughput on the default model's shape, the baseline of
scripts/train-throughput.sh (issue 12, item 4): the official LLaDA2.0 modeling code
(`modeling_llada2_moe.py` + `configuration_llada2_moe.py` from the Hugging Face hub; pass
their folder) with `torch.optim.AdamW`, from random weights, on random token ids (the
cost of a step does not depend on the data).

- ar: next-token loss, batch 8 x 128, causal mask.
- diffusion: the block-diffusion loss on `[noisy | clean]` (batch 8 x 128, so 256
  positions per row, block 32): noisy positions see their own block of noisy tokens and
  the clean blocks before it, clean positions the clean blocks up to their own; the
  loss is the cross-entropy of the masked positions weighted by 1/t.

Prints one JSON line per loss: median tokens/s (batch x seq_len per second) over the
steps after the first 3. Needs torch and transformers (not part of CI).

    python3 scripts/train-throughput-torch.py --official-code DIR [--steps 30] [--threads 2]
"""
import argparse
import json
import statistics
import sys
import time
import types

import torch

p = argparse.ArgumentParser()
p.add_argument("--official-code", required=True)
p.add_argument("--config", default="models/default/config.json")
p.add_argument("--steps", type=int, default=30)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=128)
p.add_argument("--block", type=int, default=32)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

pkg = types.ModuleType("llada2_official")
pkg.__path__ = [args.official_code]
sys.modules["llada2_official"] = pkg
from llada2_official.configuration_llada2_moe import LLaDA2MoeConfig  # noqa: E402
from llada2_official.modeling_llada2_moe import LLaDA2MoeModelLM  # noqa: E402

config = LLaDA2MoeConfig(**json.load(open(args.config)))
config._attn_implementation = "sdpa"
mask_id = 1
B, L, blk = args.batch, args.seq, args.block
NEG = float("-inf")


def additive(allowed):
    return torch.zeros(allowed.shape).masked_fill(~allowed, NEG)[None, None]


i = torch.arange(L)
causal = additive(i[:, None] >= i[None, :])
b = torch.cat([i // blk, i // blk])
noisy = torch.arange(2 * L) < L
allowed = torch.where(
    noisy[:, None],
    torch.where(noisy[None, :], b[:, None] == b[None, :], b[None, :] < b[:, None]),
    ~noisy[None, :] & (b[None, :] <= b[:, None]),
)
diffusion_mask = additive(allowed)
positions = torch.arange(L)


def ar_loss(model, ids):
    logits = model(ids, attention_mask=causal, position_ids=positions[None]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def diffusion_loss(model, ids):
    t = torch.rand(B, 1).clamp(min=1e-3)
    masked = torch.rand(B, L) < t
    x = torch.cat([torch.where(masked, torch.full_like(ids, mask_id), ids), ids], dim=1)
    pos = torch.cat([positions, positions])[None]
    logits = model(x, attention_mask=diffusion_mask, position_ids=pos).logits[:, :L]
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), reduction="none").view(B, L)
    return ((ce * masked) / t).sum() / (B * L)


for name, loss_fn in (("ar", ar_loss), ("diffusion", diffusion_loss)):
    model = LLaDA2MoeModelLM(config).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rates = []
    for step in range(args.steps):
        ids = torch.randint(2, config.vocab_size, (B, L))
        start = time.perf_counter()
        loss = loss_fn(model, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rates.append(B * L / (time.perf_counter() - start))
    print(json.dumps({"loss": name, "tokens_per_second": statistics.median(rates[3:]),
                      "threads": args.threads, "torch": torch.__version__}))
