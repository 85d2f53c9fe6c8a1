#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one command (under 8 minutes on a GPU): runs
# from a release binary, so a GPU machine needs no Rust toolchain.
#
#   scripts/gpu-bench.sh [LLADA]        # LLADA: the binary (default target/release/llada)
#
# Copy the binary, this script, models/ (default, default-ar) and, if the machine has no
# Vulkan loader, libvulkan.so.1 beside the binary (its folder goes on LD_LIBRARY_PATH).
# The NVIDIA driver brings its own Vulkan driver (ICD); lavapipe is never used here
# unless it is the only adapter (the output names the device).
#
# If the output says "running on llvmpipe" or finds no adapter on an NVIDIA machine, the
# Vulkan loader or the driver's ICD is not where the loader looks: put libvulkan.so.1
# beside the binary and point VK_DRIVER_FILES at the NVIDIA ICD (e.g.
# /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json, or /usr/share/vulkan/icd.d/).
#
# Prints (and writes to docs/gpu/DEVICE.txt, which scripts/performance.sh puts into
# docs/performance.md): the device, its measured read bandwidth and product rate, ms per AR step and per
# 32-token block forward with the memory and compute floor of each and the break-even
# TPF (measured and at the floors), for `--synthetic llada2-mini` (4 of its 20 layers,
# bf16 and q4k); then tokens/s of the default model (block 32, threshold 0.9) against its
# AR baseline on 100 held-out items.
set -euo pipefail
cd "$(dirname "$0")/.."
LLADA=${1:-${LLADA:-target/release/llada}}
[ -x "$LLADA" ] || LLADA=./llada
export LD_LIBRARY_PATH="$(cd "$(dirname "$LLADA")" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
OUT=${OUT:-data/gpu-bench}
# Smaller settings smoke-test the script on lavapipe: SYNTHETIC=llada2-63m ITEMS=5.
SYNTHETIC=${SYNTHETIC:-llada2-mini}
LAYERS=${LAYERS:-4}
ITEMS=${ITEMS:-100}
mkdir -p "$OUT"
run() { echo "\$ llada $*"; timeout 300 "$LLADA" "$@"; echo; }
device=$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || true)
device=${DEVICE:-${device:-gpu}}
mkdir -p docs/gpu
report="docs/gpu/$(echo "$device" | tr -c 'A-Za-z0-9._-' '-' | sed 's/-*$//').txt"
exec > >(tee "$report") 2>&1

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(uptime)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo

for quant in "" "--quant q4k"; do
    # shellcheck disable=SC2086
    run bench --device gpu --synthetic "$SYNTHETIC" --layers "$LAYERS" $quant --prompt-length 32 \
        --gen-length 32 --runs 3 --modes cached,ar --limits || echo "(failed: see above)"
done
run bench --device gpu --model models/default --block-length 32 --steps 32 --gen-length 64 \
    --runs 5 --limits || echo "(failed: see above)"

"$LLADA" train tasks --out "$OUT/tasks" --train 0 --eval "$ITEMS" --seed 2 >/dev/null
tokens_per_second() { # name model extra-args...
    local name=$1 model=$2
    shift 2
    timeout 300 "$LLADA" eval --device gpu --model "$model" --tasks "$OUT/tasks/tasks-eval.jsonl" \
        --gen-length 64 --json "$@" > "$OUT/$name.json"
    sed -E 's/.*"tokens_per_second":([0-9.]+).*/\1/' "$OUT/$name.json"
}
diffusion=$(tokens_per_second diffusion models/default --block-length 32 --steps 32 --threshold 0.9)
ar=$(tokens_per_second ar models/default-ar --block-length 1 --steps 1)
echo "default model on $ITEMS held-out items: diffusion (block 32, threshold 0.9) $diffusion tokens/s," \
    "AR baseline $ar tokens/s: $(awk -v d="$diffusion" -v a="$ar" 'BEGIN { printf "%.2f", d / a }')x"
echo "(written to $report)" >&2
