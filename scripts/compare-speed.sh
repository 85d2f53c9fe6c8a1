#!/usr/bin/env bash
# Times two llada binaries on the same workloads, alternating them ROUNDS times in one
# window (machines are shared: neighbours change the figures from minute to minute), and
# prints each one's median ms per block forward (block 32) and per AR step:
#
#   scripts/compare-speed.sh OLD_BINARY NEW_BINARY [ROUNDS]
#
# Workloads: the default model (models/default), random weights of llada2-63m in f32,
# q8_0 and q4k, and of LLaDA2.0-mini's shapes cut to 4 layers at q4k (`llada bench
# --synthetic`). With CONTENDED=1 a busy process runs on the
# side throughout (one spinning shell loop), as a server sharing its machine sees it.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: scripts/compare-speed.sh OLD_BINARY NEW_BINARY [ROUNDS]}
NEW=${2:?usage: scripts/compare-speed.sh OLD_BINARY NEW_BINARY [ROUNDS]}
ROUNDS=${3:-3}
out=data/compare-speed
rm -rf "$out"
mkdir -p "$out"
uptime
if [ "${CONTENDED:-0}" = 1 ]; then
    sh -c 'while :; do :; done' &
    spinner=$!
    trap 'kill $spinner' EXIT
    sleep 1
fi
workloads=(
    "default|--model models/default"
    "63m-f32|--synthetic llada2-63m"
    "63m-q8_0|--synthetic llada2-63m --quant q8_0"
    "63m-q4k|--synthetic llada2-63m --quant q4k"
    "mini4-q4k|--synthetic llada2-mini --layers 4 --quant q4k"
)
for round in $(seq "$ROUNDS"); do
    for w in "${workloads[@]}"; do
        IFS='|' read -r name flags <<<"$w"
        for side in old new; do
            bin=$OLD; [ "$side" = new ] && bin=$NEW
            # shellcheck disable=SC2086
            "$bin" bench $flags --threshold 1.0 --gen-length 64 --block-length 32 --modes cached,ar \
                --runs 3 --json > "$out/$name-$side-$round.json"
        done
    done
done
uptime
python3 - "$out" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print(f"{'workload':<10} {'block old':>10} {'block new':>10} {'ratio':>6} {'AR old':>8} {'AR new':>8} {'ratio':>6}   (ms, median of {rounds})")
for name in ["default", "63m-f32", "63m-q8_0", "63m-q4k", "mini4-q4k"]:
    med = {}
    for side in ["old", "new"]:
        block, ar = [], []
        for r in range(1, rounds + 1):
            rows = {row["mode"]: row for row in json.load(open(f"{out}/{name}-{side}-{r}.json"))["rows"]}
            block.append(rows["cached"]["ms_per_forward"])
            ar.append(rows["AR: block 1, cached"]["ms_per_forward"])
        med[side] = (statistics.median(block), statistics.median(ar))
    (bo, ao), (bn, an) = med["old"], med["new"]
    print(f"{name:<10} {bo:>10.3f} {bn:>10.3f} {bn/bo:>6.2f} {ao:>8.3f} {an:>8.3f} {an/ao:>6.2f}")
EOF
