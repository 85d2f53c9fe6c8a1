#!/usr/bin/env bash
# Produces docs/performance.md: where a forward pass's time goes and how far it is from
# the machine's limits, on the shipped default model and on random weights of real
# shapes (llada2-63m, LLaDA2.0-mini cut to 4 layers). Every figure comes from the
# commands below, run in one go on this machine; run it on a quiet machine.
#
#   scripts/performance.sh            # release build first: cargo build --release
set -euo pipefail
cd "$(dirname "$0")/.."
LLADA=${LLADA:-target/release/llada}
out=data/performance
mkdir -p "$out"

bench() { # name args...
    local name=$1; shift
    "$LLADA" bench --threshold 1.0 --gen-length 64 --modes cached,ar --runs 3 --json "$@" > "$out/$name.json"
}

uptime > "$out/uptime.txt"
lscpu > "$out/lscpu.txt"
bench default-limits --limits
bench default-1-thread --threads 1
bench default-2-threads --threads 2
for q in f32 q8_0 q4k; do
    quant=(); [ "$q" = f32 ] || quant=(--quant "$q")
    bench "63m-$q" --synthetic llada2-63m "${quant[@]}" --limits
done
bench mini4-q4k --synthetic llada2-mini --layers 4 --quant q4k --limits

# Under contention: the same q8_0 and f32 benches while another process keeps both
# cores busy (a server sharing its machine sees this).
busy() { python3 -c 'import multiprocessing as m
def spin():
    while True: pass
ps=[m.Process(target=spin) for _ in range(2)]
[p.start() for p in ps]; [p.join() for p in ps]' & }
busy; pid=$!
sleep 1
bench 63m-q8_0-contended --synthetic llada2-63m --quant q8_0
bench 63m-f32-contended --synthetic llada2-63m
kill "$pid"; pkill -P "$pid" 2>/dev/null || true; wait 2>/dev/null || true

# Where the time goes: a sampled profile of block forwards on the default model.
if command -v perf >/dev/null && perf record -e cpu-clock -o /dev/null true 2>/dev/null; then
    perf record -q -F 2000 -e cpu-clock -g -o "$out/perf.data" \
        "$LLADA" bench --threshold 1.0 --gen-length 256 --modes cached --runs 3 >/dev/null 2>&1
    perf report -i "$out/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | head -60 > "$out/profile.txt"
fi

python3 - "$out" <<'PY'
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
load = lambda n: json.loads((out / f"{n}.json").read_text())
rows = lambda r: {x["mode"]: x for x in r["rows"]}
L = ["# Performance", "",
     "Produced by `scripts/performance.sh` on this machine in one run (release build;",
     "`--threshold 1.0 --gen-length 64`, so every block forward fills one token and costs",
     "what a forward costs; exact mode). Load before the run: `" + (out / "uptime.txt").read_text().strip() + "`.", ""]
cpu = re.search(r"Model name:\s*(.*)", (out / "lscpu.txt").read_text())
m = load("default-limits")["machine"]
L += [f"Machine: {cpu.group(1) if cpu else 'unknown'}, {m['threads']} threads. Measured by `llada bench --limits`: "
      f"memory read {m['read_gb_per_s']:.1f} GB/s; matrix products (GMAC/s) at their best "
      f"f32 {m['peak']['f32']:.1f}, q8_0 {m['peak']['q8_0']:.1f}, q4k {m['peak']['q4k']:.1f}; at a block's "
      f"shape (32 rows) f32 {m['block']['f32']:.1f}, q8_0 {m['block']['q8_0']:.1f}, q4k {m['block']['q4k']:.1f}.", ""]
L += ["## Break-even TPF and distance from the limits", "",
      "| model | weights | block forward ms | AR step ms | break-even TPF | block: MB read / MMAC / % of limit | AR: MB read / MMAC / % of limit | break-even at the limits |",
      "|---|---|---|---|---|---|---|---|"]
for name, label in [("default-limits", "default model (shipped)"), ("63m-f32", "llada2-63m"),
                    ("63m-q8_0", "llada2-63m"), ("63m-q4k", "llada2-63m"), ("mini4-q4k", "LLaDA2.0-mini, 4 of 20 layers")]:
    r = load(name); be = r["break_even"]; rr = rows(r)
    c, a = rr["cached"]["limits"], rr["AR: block 1, cached"]["limits"]
    w = {"63m-f32": "f32", "63m-q8_0": "q8_0", "63m-q4k": "q4k", "mini4-q4k": "q4k"}.get(name, "bf16 → f32")
    floor = lambda f: max(f["memory_floor_ms"], f["compute_floor_ms"])
    L.append(f"| {label} | {w} | {be['block_forward_ms']:.3f} | {be['ar_step_ms']:.3f} | {be['break_even_tpf']:.2f} | "
             f"{c['weight_mb']:.1f} / {c['mmacs']:.0f} / {100*c['fraction_of_limit']:.0f}% | "
             f"{a['weight_mb']:.1f} / {a['mmacs']:.1f} / {100*a['fraction_of_limit']:.0f}% | {floor(c) / floor(a):.2f} |")
L += ["", "\"% of limit\" is the larger of the memory floor (weight bytes read at the measured",
      "bandwidth) and the compute floor (multiply-accumulates at the best measured rate of llada's",
      "linear layers for the weight type) over the measured time: 100% would be at the limit.",
      "\"Break-even at the limits\" is the block forward's floor over the AR step's floor: the",
      "break-even TPF if both ran at those limits. An AR step that gets closer to its floor",
      "raises the measured break-even towards it; only a faster multiply (int8/bf16 units) or",
      "less weight traffic per block lowers the floor itself.", ""]
L += ["## Threads", "", "| default model | block forward ms | AR step ms |", "|---|---|---|"]
for t in (1, 2):
    be = load(f"default-{t}-thread" + ("s" if t > 1 else ""))["break_even"]
    L.append(f"| {t} thread{'s' if t > 1 else ''} | {be['block_forward_ms']:.3f} | {be['ar_step_ms']:.3f} |")
L += ["", "## Under contention (two busy processes on the two cores)", "",
      "| llada2-63m | block forward ms alone | contended | AR step ms alone | contended |", "|---|---|---|---|---|"]
for q in ("f32", "q8_0"):
    alone, busy = load(f"63m-{q}")["break_even"], load(f"63m-{q}-contended")["break_even"]
    L.append(f"| {q} | {alone['block_forward_ms']:.2f} | {busy['block_forward_ms']:.2f} | {alone['ar_step_ms']:.2f} | {busy['ar_step_ms']:.2f} |")
prof = out / "profile.txt"
if prof.exists():
    L += ["", "## Where a block forward's time goes (default model)", "",
          "Top of a sampled profile (`perf record -e cpu-clock`, self time by symbol):", "", "```"]
    L += prof.read_text().splitlines()[:25] + ["```"]
pathlib.Path("docs/performance.md").write_text("\n".join(L) + "\n")
print("\n".join(L))
PY
