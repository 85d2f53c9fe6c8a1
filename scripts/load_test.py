#!/usr/bin/env python3
"""Load test for `llada serve` (Python standard library only).

Three phases against one running server, all in the same run so the figures compare:
  1. single stream: N streamed chat requests one after another (tokens/s);
  2. 8 concurrent streams: 8 clients doing the same N requests each (aggregate tokens/s);
  3. load: --clients threads share --requests requests, mixing chat and completions,
     streamed and whole, and closing a fraction of streams after their first chunk.
Every response is checked (status, JSON shape, finish reason, usage, [DONE]); greedy
answers must equal the single-stream answer for the same prompt (batching must not
change results). Prints p50/p99 latency and tokens/s; exits 1 on any failure.

    python3 scripts/load_test.py --url http://127.0.0.1:8080 [--api-key KEY] [--json]
"""

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse

PROMPTS = [
    "Reverse: 1 2 3 4 5",
    "Sort: 9 4 7 1 3",
    "Copy: the quick brown fox",
    "Add: 12 + 7",
    "Compare: 31 and 13",
    "Reverse: a b c d",
    "Sort: 5 2 8",
    "Copy: to be or not to be",
]


class Client:
    def __init__(self, url, api_key, model, max_tokens):
        u = urllib.parse.urlparse(url)
        if u.scheme != "http":
            raise SystemExit(f"--url must be an http:// URL, got {url}")
        self.host, self.port = u.hostname, u.port or 80
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.model = model
        self.max_tokens = max_tokens

    def body(self, endpoint, prompt, stream):
        body = {"model": self.model, "max_tokens": self.max_tokens, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = f"<role>HUMAN</role>{prompt}<|role_end|><role>ASSISTANT</role>"
        return body

    def request(self, endpoint, prompt, stream, disconnect=False):
        """Returns (text, completion_tokens, seconds) or None after a disconnect."""
        path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        start = time.perf_counter()
        try:
            conn.request("POST", path, json.dumps(self.body(endpoint, prompt, stream)), self.headers)
            resp = conn.getresponse()
            if resp.status != 200:
                raise AssertionError(f"{path}: HTTP {resp.status}: {resp.read()[:300]!r}")
            if not stream:
                data = json.loads(resp.read())
                return check_whole(endpoint, data) + (time.perf_counter() - start,)
            if disconnect:
                while True:
                    line = resp.readline()
                    if not line or line.startswith(b"data: "):
                        break
                return None  # closing the connection below is the disconnect
            return read_stream(endpoint, resp) + (time.perf_counter() - start,)
        finally:
            conn.close()

    def get(self, path):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", path, headers=self.headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()


def check_usage(usage):
    assert usage["prompt_tokens"] > 0, usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
    assert usage["forwards"] >= 1, usage
    return usage["completion_tokens"]


def check_whole(endpoint, data):
    choice = data["choices"][0]
    assert choice["finish_reason"] in ("stop", "length"), choice
    if endpoint == "chat":
        assert data["object"] == "chat.completion", data
        assert choice["message"]["role"] == "assistant", choice
        text = choice["message"]["content"]
    else:
        assert data["object"] == "text_completion", data
        text = choice["text"]
    return text, check_usage(data["usage"])


def read_stream(endpoint, resp):
    text, finish, tokens, done = [], None, None, False
    for raw in resp:
        line = raw.decode().rstrip("\n")
        if not line.startswith("data: "):
            continue
        payload = line[len("data: "):]
        if payload == "[DONE]":
            done = True
            break
        chunk = json.loads(payload)
        assert "error" not in chunk, chunk
        if chunk.get("usage"):
            tokens = check_usage(chunk["usage"])
            continue
        choice = chunk["choices"][0]
        piece = choice["delta"].get("content") if endpoint == "chat" else choice["text"]
        text.append(piece or "")
        finish = choice["finish_reason"] or finish
    assert done, "stream ended without [DONE]"
    assert finish in ("stop", "length"), finish
    assert tokens is not None, "no usage chunk"
    return "".join(text), tokens


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def run_threads(n, target):
    errors = []

    def wrapped(i):
        try:
            target(i)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            errors.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--api-key")
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--baseline", type=int, default=8, help="requests per stream in phases 1 and 2")
    ap.add_argument("--streams", type=int, default=8, help="concurrent streams in phase 2")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--disconnect", type=float, default=0.1, help="fraction of streams closed early")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args()
    client = Client(args.url, args.api_key, args.model, args.max_tokens)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.baseline)]
    failures = []

    # 1. One stream.
    expected = {}
    single_tokens, start = 0, time.perf_counter()
    for p in prompts:
        text, tokens, _ = client.request("chat", p, stream=True)
        expected[("chat", p)] = text
        single_tokens += tokens
    single_s = time.perf_counter() - start

    # 2. Eight streams at once, the same requests each.
    counts = [0] * args.streams

    def stream_client(i):
        for p in prompts:
            text, tokens, _ = client.request("chat", p, stream=True)
            if text != expected[("chat", p)]:
                raise AssertionError(f"{p!r}: batched answer {text!r} != single {expected[('chat', p)]!r}")
            counts[i] += tokens

    multi_s, errors = run_threads(args.streams, stream_client)
    failures += errors

    # 3. Mixed load with disconnects.
    lock = threading.Lock()
    remaining = [args.requests]
    latencies, load_tokens, stats = [], [0], {"ok": 0, "disconnected": 0}
    rng = random.Random(args.seed)
    plans = [
        (rng.choice(["chat", "completions"]), rng.choice(PROMPTS), rng.random() < 0.5, rng.random())
        for _ in range(args.requests)
    ]

    def load_client(_):
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
                endpoint, prompt, stream, roll = plans[remaining[0]]
            disconnect = stream and roll < args.disconnect
            result = client.request(endpoint, prompt, stream, disconnect)
            with lock:
                if result is None:
                    stats["disconnected"] += 1
                    continue
                text, tokens, seconds = result
                key = (endpoint, prompt)
                want = expected.setdefault(key, text)
                if text != want:
                    raise AssertionError(f"{endpoint} {prompt!r}: {text!r} != {want!r}")
                stats["ok"] += 1
                latencies.append(seconds)
                load_tokens[0] += tokens

    load_s, errors = run_threads(args.clients, load_client)
    failures += errors

    # Every slot must be free again once the clients are gone.
    deadline = time.time() + 30
    while True:
        status, body = client.get("/health")
        health = json.loads(body)
        if status == 200 and health["active"] == 0 and health["queued"] == 0:
            break
        if time.time() > deadline:
            failures.append(f"slots still busy after the load: {health}")
            break
        time.sleep(0.05)
    status, metrics = client.get("/metrics")
    cancelled = 0
    for line in metrics.splitlines():
        if line.startswith('llada_generations_total{outcome="cancelled"}'):
            cancelled = int(float(line.split()[-1]))

    if stats["ok"] + stats["disconnected"] != args.requests and not failures:
        failures.append("some requests were never made")
    single_tps = single_tokens / single_s
    multi_tps = sum(counts) / multi_s
    result = {
        "single_stream_tokens_per_s": round(single_tps, 1),
        "concurrent_streams": args.streams,
        "concurrent_tokens_per_s": round(multi_tps, 1),
        "speedup": round(multi_tps / single_tps, 2),
        "load_clients": args.clients,
        "load_requests": args.requests,
        "load_ok": stats["ok"],
        "load_disconnected": stats["disconnected"],
        "server_cancelled": cancelled,
        "load_tokens_per_s": round(load_tokens[0] / load_s, 1),
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "latency_p99_s": round(percentile(latencies, 99), 3),
        "failures": failures,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"single stream:          {single_tps:8.1f} tokens/s ({args.baseline} requests)")
        print(f"{args.streams} concurrent streams:   {multi_tps:8.1f} tokens/s aggregate "
              f"({result['speedup']}x single)")
        print(f"load: {args.clients} clients, {args.requests} requests: {stats['ok']} checked, "
              f"{stats['disconnected']} disconnected on purpose (server counted {cancelled} cancelled), "
              f"{result['load_tokens_per_s']} tokens/s")
        print(f"latency p50 {result['latency_p50_s']} s, p99 {result['latency_p99_s']} s")
        for f in failures:
            print("FAIL", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
