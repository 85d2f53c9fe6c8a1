#!/usr/bin/env bash
# Checks that a change left decoding as it was: two llada binaries answer the same
# 400 held-out task items (docs/experiments.md's items: seed 2, never trained on) with
# every decoder, the dual block cache and AR decoding of both shipped models, and the
# answers are compared one by one.
#
#   scripts/compare-answers.sh OLD_BINARY NEW_BINARY
#
# e.g. build the previous commit into /tmp/old (git worktree add /tmp/old HEAD~1 &&
# cargo build --release --manifest-path /tmp/old/Cargo.toml), then
# scripts/compare-answers.sh /tmp/old/target/release/llada target/release/llada.
# Prints one line per setting and exits 1 if any answer differs.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: scripts/compare-answers.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: scripts/compare-answers.sh OLD_BINARY NEW_BINARY}
TASKS=${TASKS:-data/tasks-heldout/tasks-eval.jsonl}
if [ "$TASKS" = data/tasks-heldout/tasks-eval.jsonl ] && [ ! -f "$TASKS" ]; then
    "$NEW" train tasks --out data/tasks-heldout --train 0 --eval 400 --seed 2
fi
out=data/compare-answers
rm -rf "$out"
mkdir -p "$out/old" "$out/new"

settings=(
    "ar|models/default-ar|--block-length 1 --steps 1"
    "threshold-0.9|models/default|--block-length 32 --steps 32 --threshold 0.9"
    "threshold-0.95-block-8|models/default|--block-length 8 --steps 8"
    "joint|models/default|--block-length 32 --steps 32 --decoder joint"
    "credit|models/default|--block-length 32 --steps 32 --decoder credit"
    "hierarchy|models/default|--block-length 32 --steps 32 --decoder hierarchy"
    "dual-0.9|models/default|--block-length 32 --steps 32 --threshold 0.9 --block-cache dual"
    "q8_0-0.9|models/default|--block-length 32 --steps 32 --threshold 0.9 --quant q8_0"
    "q4k-0.9|models/default|--block-length 32 --steps 32 --threshold 0.9 --quant q4k"
)
status=0
for s in "${settings[@]}"; do
    IFS='|' read -r name model flags <<<"$s"
    for side in old new; do
        bin=$OLD; [ "$side" = new ] && bin=$NEW
        # shellcheck disable=SC2086
        "$bin" eval --model "$model" --tasks "$TASKS" --gen-length 64 --json $flags > "$out/$side/$name.json"
    done
    python3 - "$out/old/$name.json" "$out/new/$name.json" "$name" <<'EOF' || status=1
import json, sys
old, new = (json.load(open(p))["tasks"] for p in sys.argv[1:3])
a, b = old["answers"], new["answers"]
same = sum(x == y for x, y in zip(a, b))
print(f"{sys.argv[3]:<24} {same}/{len(a)} answers identical; accuracy {old['accuracy']:.3f} -> {new['accuracy']:.3f}; forwards {old['forwards']} -> {new['forwards']}")
sys.exit(0 if len(a) == len(b) and same == len(a) and old["forwards"] == new["forwards"] else 1)
EOF
done
exit $status
