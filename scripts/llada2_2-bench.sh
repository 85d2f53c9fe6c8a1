#!/usr/bin/env bash
# LLaDA2.2's figures, written to docs/llada2_2/*.txt (scripts/performance.sh puts them
# in docs/performance.md): every number comes from the commands below, run one after
# the other in one window on this machine.
#
# 1. routing.txt: block routing pays: `llada bench --context` on random weights of
#    LLaDA2.2-mini's shape and of LLaDA2.0-mini's (the same shapes but block routing), q4k,
#    LAYERS layers, one after the other with the same settings: a block-32 forward and an
#    AR step after a 32-token prompt, the routed experts' weight bytes each read
#    (counted), break-even TPF.
# 2. context.txt: how cost grows with the context on LLaDA2.2-mini's shape
#    (CONTEXT_LAYERS layers, bf16 KV cache): prefill, a block forward and an AR step
#    after prompts of CONTEXTS tokens, the cache's size and the process's memory.
# 3. long-prefill.txt: a LONG-token prompt (1 layer) prefilled in 1024-token chunks:
#    memory stays bounded by the chunk (peak RSS from /usr/bin/time).
#
#   cargo build --release && scripts/llada2_2-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LLADA=${LLADA:-target/release/llada}
LAYERS=${LAYERS:-20}
CONTEXT_LAYERS=${CONTEXT_LAYERS:-2}
CONTEXTS=${CONTEXTS:-1024,8192,32768}
LONG=${LONG:-65536}
out=docs/llada2_2
mkdir -p "$out"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

header() {
    echo "$ uptime"; uptime
    echo "$ lscpu | grep 'Model name'"; lscpu | grep 'Model name' || true
}

{
    header
    for shape in llada2_2-mini llada2-mini; do
        cmd=("$LLADA" bench --device cpu --synthetic "$shape" --layers "$LAYERS" --quant q4k
            --context 32 --runs 5)
        echo "\$ ${cmd[*]}"
        "${cmd[@]}" 2>&1
    done
} | tee "$out/routing.txt"

{
    header
    cmd=("$LLADA" bench --device cpu --synthetic llada2_2-mini --layers "$CONTEXT_LAYERS" --quant q4k
        --kv-cache bf16 --context "$CONTEXTS" --runs 3)
    echo "\$ ${cmd[*]}"
    "${cmd[@]}" 2>&1
} | tee "$out/context.txt"

{
    header
    cmd=("$LLADA" bench --device cpu --synthetic llada2_2-mini --layers 1 --quant q4k
        --kv-cache bf16 --context "$LONG" --runs 1)
    echo "\$ /usr/bin/time -v ${cmd[*]}"
    /usr/bin/time -v "${cmd[@]}" 2>&1 | grep -v -E '^\s+(Average|Exit|Socket|Signals|Swaps|File system|Voluntary|Involuntary|Page size|Minor|Major|Percent|System time|User time)'
} | tee "$out/long-prefill.txt"

# 4. context-128k.txt (FULL_CONTEXT=1, ~30 min): a 128K-position context filled (1 layer,
#    bf16): resident memory against the printed estimate.
if [ "${FULL_CONTEXT:-0}" = 1 ]; then
    {
        uptime
        cmd=("$LLADA" bench --device cpu --synthetic llada2_2-mini --layers 1 --quant q4k
            --kv-cache bf16 --context 131040 --runs 1)
        echo "\$ /usr/bin/time -v ${cmd[*]}"
        /usr/bin/time -v "${cmd[@]}" 2>&1 | grep -v -E '^\s+(Average|Exit|Socket|Signals|Swaps|File system|Voluntary|Involuntary|Page size|Minor|Major|Percent|System time|User time)'
    } | tee "$out/context-128k.txt"
fi
