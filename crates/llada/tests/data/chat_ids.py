"""Reference prompt ids from transformers: reads {"dir": ..., "conversations": [...]}
on stdin, prints the ids of apply_chat_template(conv, add_generation_prompt=True)."""
import json
import sys

from transformers import AutoTokenizer

request = json.load(sys.stdin)
tok = AutoTokenizer.from_pretrained(request["dir"])
out = []
for conv in request["conversations"]:
    ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    out.append(list(ids))
print(json.dumps(out))
