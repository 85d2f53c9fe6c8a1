#!/usr/bin/env python3
"""Does the official PyTorch code of LLaDA2.0 load a model llada trained, and decode the
same answers as llada? (issue 12, item 5)

The official code (`modeling_llada2_moe.py` and `configuration_llada2_moe.py`, published
with inclusionAI/LLaDA2.0-mini on the Hugging Face hub) is not in this repository; pass
the folder holding the two files. Needs torch, transformers, safetensors (not part of CI);
the official code calls `DynamicCache.get_usable_length`, which transformers 4.56 removed
(checked with torch 2.15 and transformers 4.52.4).

    python3 scripts/official-check.py --official-code DIR --model models/default \
        --tasks data/tasks-heldout/tasks-eval.jsonl --limit 40

For each task item: the chat prompt as transformers' chat template writes it, the
official `generate()` (greedy) and `llada generate --prompt-ids` with the same settings;
answers compared up to the first EOS or <|role_end|> (llada stops at either; the official
code only after EOS). Two things in the official `generate()` are worked around, as
the code is published: temperature 0 still samples (`torch.multinomial`), so greedy
argmax is patched in, with the argmax's softmax probability as the confidence; and the
attention mask it builds is bf16 whatever the model's dtype, so it is cast to the
model's dtype (its values are 0 and -inf, so the cast is exact). Exit status 1 when any
answer differs.
"""
import argparse
import json
import subprocess
import sys
import types

import torch
import transformers

p = argparse.ArgumentParser()
p.add_argument("--official-code", required=True)
p.add_argument("--model", action="append", required=True)
p.add_argument("--tasks", required=True)
p.add_argument("--limit", type=int, default=40)
p.add_argument("--gen-length", type=int, default=64)
p.add_argument("--block-length", type=int, default=32)
p.add_argument("--steps", type=int, default=32)
p.add_argument("--threshold", type=float, default=0.9)
p.add_argument("--llada", default="target/release/llada")
args = p.parse_args()
torch.set_num_threads(1)

# The two official files as a package (the modeling file imports the config relatively).
pkg = types.ModuleType("llada2_official")
pkg.__path__ = [args.official_code]
sys.modules["llada2_official"] = pkg
from llada2_official.configuration_llada2_moe import LLaDA2MoeConfig  # noqa: E402
from llada2_official.modeling_llada2_moe import LLaDA2MoeModelLM  # noqa: E402


def greedy(self, logits, temperature=1.0, top_k=0, top_p=1.0):
    probs = torch.softmax(logits.float(), dim=-1)
    confidence, token = probs.max(dim=-1)
    return token, confidence


LLaDA2MoeModelLM._sample_with_temperature_topk_topp = greedy


def official(model, ids, eos, mask):
    forward = model.forward

    def cast_mask(*a, attention_mask=None, **k):
        if attention_mask is not None:
            attention_mask = attention_mask.to(model.dtype)
        return forward(*a, attention_mask=attention_mask, **k)

    model.forward = cast_mask
    try:
        out = model.generate(inputs=torch.tensor([ids]), temperature=0.0,
                             block_length=args.block_length, steps=args.steps,
                             gen_length=args.gen_length, threshold=args.threshold,
                             eos_id=eos, mask_id=mask)
    finally:
        del model.forward
    out = out[0].tolist()
    # Some copies of the official code return the prompt with the answer.
    return out[len(ids):] if out[: len(ids)] == ids else out


def llada(model_dir, ids):
    cmd = [args.llada, "generate", "-m", model_dir, "--prompt-ids", ",".join(map(str, ids)),
           "--gen-length", str(args.gen_length), "--block-length", str(args.block_length),
           "--steps", str(args.steps), "--threshold", str(args.threshold), "--json"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)["output_ids"]


def answer(ids, stops):
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i]
    return ids


items = [json.loads(line) for line in open(args.tasks)][: args.limit]
print(f"torch {torch.__version__}, transformers {transformers.__version__}; "
      f"{len(items)} items of {args.tasks}; gen {args.gen_length}, block {args.block_length}, "
      f"steps {args.steps}, threshold {args.threshold}")
failed = False
for model_dir in args.model:
    config = LLaDA2MoeConfig.from_pretrained(model_dir)
    # transformers >= 4.56 names the dtype argument `dtype`; the official code's
    # `get_usable_length` calls need an older one, which names it `torch_dtype`.
    new_name = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)
    dtype_arg = "dtype" if new_name else "torch_dtype"
    model, info = LLaDA2MoeModelLM.from_pretrained(model_dir, config=config,
                                                    output_loading_info=True,
                                                    **{dtype_arg: torch.float32})
    model.eval()
    unloaded = {k: v for k, v in info.items() if v}
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    generation = json.load(open(f"{model_dir}/generation_config.json"))
    eos, mask = generation["eos_token_id"], generation["mask_token_id"]
    stops = {eos, tok.convert_tokens_to_ids("<|role_end|>")}
    same = correct = 0
    for item in items:
        question, expected = item["messages"][0]["content"], item["messages"][-1]["content"]
        ids = tok.apply_chat_template([{"role": "user", "content": question}],
                                      add_generation_prompt=True, tokenize=True)
        a = answer(official(model, ids, eos, mask), stops)
        b = answer(llada(model_dir, ids), stops)
        same += a == b
        correct += tok.decode(a).strip() == expected
        if a != b:
            print(f"  differs: {question!r}: official {tok.decode(a)!r}, llada {tok.decode(b)!r}")
    failed |= same != len(items) or bool(unloaded)
    print(f"{model_dir}: loaded by the official code ({unloaded or 'every weight used'}); "
          f"same answer as llada on {same}/{len(items)} items; official answers correct {correct}/{len(items)}")
sys.exit(1 if failed else 0)
