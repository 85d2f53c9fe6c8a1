#!/usr/bin/env bash
# Memory of a GGUF load at LLaDA2.0-mini's real size: writes a random-weight q4k file of
# the real shapes (`llada quantize --synthetic llada2-mini`), loads it with `llada bench`
# (which prints the resident memory after loading and the peak after its forwards), and
# saves the output in docs/gguf/load.txt (docs/performance.md includes it).
# Needs ~10 GB of disk (WORK, default /tmp) and ~20 GB of memory. Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${WORK:-/tmp}"
cargo build --release -p llada-cli
llada=target/release/llada
file="$work/llada2-mini-random-q4k.gguf"
out=docs/gguf/load.txt
mkdir -p docs/gguf
{
    echo "# $(date -u +%Y-%m-%d) $(uptime)"
    echo "# $(lscpu | grep 'Model name' | sed 's/  */ /g'), $(nproc) threads"
    echo "\$ llada quantize --synthetic llada2-mini --quant q4k --out $file"
    "$llada" quantize --synthetic llada2-mini --quant q4k --out "$file"
    echo "file size: $(stat -c %s "$file") bytes ($(awk "BEGIN {printf \"%.2f\", $(stat -c %s "$file") / 2^30}") GiB)"
    echo "\$ llada bench --model $file --gen-length 32 --modes cached --runs 1 --device cpu"
    "$llada" bench --model "$file" --gen-length 32 --modes cached --runs 1 --device cpu 2>/dev/null
} | tee "$out"
rm -f "$file"
