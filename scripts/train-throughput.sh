#!/usr/bin/env bash
# Trainer throughput on the default model's shape (issue 12, item 4): 30 optimizer steps
# each of the AR loss (batch 8 x 128), the block-diffusion loss (8 x 128, block 32, on
# `[noisy | clean]`) and SFT (8 x 64 chat rows, two complementary views), from random
# weights, on the repository's data. Prints the median tokens/s (batch x seq_len per
# second) of each stage, skipping the first 3 steps. With BASELINE=path/to/other/llada,
# the other binary runs the same recipe right after, in the same window, and a ratio
# column compares them.
# With OFFICIAL_CODE=folder of the official modeling code (see
# scripts/train-throughput-torch.py), PyTorch trains the same shape right after, with
# THREADS threads (default 2), and a column compares llada with it.
#   scripts/train-throughput.sh                 # target/release/llada
#   BASELINE=/tmp/old-llada scripts/train-throughput.sh
#   OFFICIAL_CODE=/path/to/llada2-code PYTHON=venv/bin/python3 scripts/train-throughput.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LLADA=${LLADA:-target/release/llada}
STEPS=${STEPS:-30}
dir=data/throughput
if [ ! -f data/tasks/tasks-train.jsonl ]; then
    "$LLADA" train tasks --out data/tasks --kinds short --train 20000 --eval 200 --seed 0
fi
rm -rf "$dir"
mkdir -p "$dir"
model=$(sed -n '/^\[model\]/,/^$/p' models/default/recipe.toml)
stage() { # name kind data seq_len extra
    cat <<TOML

[[stage]]
name = "$1"
kind = "$2"
data = ["$3"]
steps = $STEPS
batch_size = 8
seq_len = $4
checkpoint_every = 1000
lr = { kind = "cosine", peak = 1e-3, min_lr = 1e-4, warmup = 5, total = $STEPS }
$5
TOML
}
for who in llada baseline; do
    [ "$who" = baseline ] && [ -z "${BASELINE:-}" ] && continue
    {
        printf 'name = "throughput"\nseed = 0\nout = "runs-%s"\ntokenizer = "../../models/default"\n\n%s\n' "$who" "$model"
        stage ar ar ../shakespeare 128 ""
        stage wsd wsd ../shakespeare 128 'block_schedule = { warmup = [32], warmup_steps_each = 100000, seq_len = 128, stable_steps = 0, decay = [], decay_steps_each = 1 }'
        stage sft sft ../tasks/tasks-train.jsonl 64 "block = 32"
    } > "$dir/$who.toml"
done
uptime | tee "$dir/uptime.txt"
"$LLADA" train run "$dir/llada.toml" --quiet > /dev/null
if [ -n "${BASELINE:-}" ]; then
    "$BASELINE" train run "$dir/baseline.toml" --quiet > /dev/null
fi
if [ -n "${OFFICIAL_CODE:-}" ]; then
    "${PYTHON:-python3}" scripts/train-throughput-torch.py --official-code "$OFFICIAL_CODE" \
        --steps "$STEPS" --threads "${THREADS:-2}" > "$dir/torch.jsonl"
fi
python3 - "$dir" <<'PY' | tee "$dir/table.md"
import json, pathlib, statistics, sys
d = pathlib.Path(sys.argv[1])
def rate(who, stage):
    p = d / f"runs-{who}" / stage / "metrics.jsonl"
    if not p.exists():
        return None
    rows = [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
    return statistics.median(r["tokens_per_second"] for r in rows[3:])
has_base = (d / "runs-baseline").exists()
torch = {}
if (d / "torch.jsonl").exists():
    for l in (d / "torch.jsonl").read_text().splitlines():
        r = json.loads(l)
        torch[{"ar": "ar", "diffusion": "wsd"}[r["loss"]]] = r["tokens_per_second"]
print("| stage | llada tokens/s |" + (" baseline tokens/s | ratio |" if has_base else "")
      + (" PyTorch tokens/s | llada / PyTorch |" if torch else ""))
print("|---|---|" + ("---|---|" if has_base else "") + ("---|---|" if torch else ""))
for stage, label in (("ar", "AR loss, 8 x 128"), ("wsd", "block diffusion, 8 x 128, block 32"),
                     ("sft", "SFT, 8 x 64, two views")):
    a = rate("llada", stage)
    line = f"| {label} | {a:.0f} |"
    if has_base:
        b = rate("baseline", stage)
        line += f" {b:.0f} | {a / b:.2f}x |"
    if torch:
        t = torch.get(stage)
        line += f" {t:.0f} | {a / t:.2f}x |" if t else " - | - |"
    print(line)
PY
