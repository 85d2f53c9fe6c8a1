"""Reference sampling of one position, as LLaDA2's official `generate` defines it:
logits / temperature, then top-k (logits below the k-th largest set to -inf), then
top-p (sorted descending; a token is dropped when the cumulative probability before it
already exceeds p; the first token is always kept), then softmax. The official code
draws with torch.multinomial; here the given uniform u picks the token by inverting the
cumulative distribution over token ids, so a test can feed llada the same u.

Standard library only. Reads JSON from stdin:
  {"cases": [{"logits": [...], "temperature": T, "top_k": K or null, "top_p": P or null,
              "u": U}, ...]}
Writes [[token, probability], ...].
"""

import json
import math
import sys


def softmax(xs):
    m = max(xs)
    ex = [math.exp(x - m) if x != -math.inf else 0.0 for x in xs]
    z = sum(ex)
    return [e / z for e in ex]


def pick(case):
    t = case["temperature"]
    logits = [x / t for x in case["logits"]]
    k = case.get("top_k")
    if k and 0 < k < len(logits):
        kth = sorted(logits, reverse=True)[k - 1]
        logits = [x if x >= kth else -math.inf for x in logits]
    p = case.get("top_p")
    if p is not None and p < 1.0:
        order = sorted(range(len(logits)), key=lambda i: -logits[i])
        probs = softmax([logits[i] for i in order])
        cumulative, remove = 0.0, []
        for q in probs:
            remove.append(cumulative > p)
            cumulative += q
        for i, r in zip(order, remove):
            if r:
                logits[i] = -math.inf
    probs = softmax(logits)
    acc, last = 0.0, 0
    for i, q in enumerate(probs):
        if q > 0.0:
            acc += q
            last = i
            if case["u"] < acc:
                return [i, probs[i]]
    return [last, probs[last]]


cases = json.load(sys.stdin)["cases"]
json.dump([pick(c) for c in cases], sys.stdout)
