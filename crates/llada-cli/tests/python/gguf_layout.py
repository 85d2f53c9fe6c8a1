"""Structural check of a GGUF file against llama.cpp's `llada2` layout, as documented in
fixtures/golden/README.md, with llama.cpp's own `gguf` Python package:

    python3 gguf_layout.py FILE.gguf [--tokenizer]

Keys and their types, every tensor's name, ggml type and shape (derived from the keys),
nothing extra. With --tokenizer the file must carry a gpt2 tokenizer and a chat template.
Prints "ok" on success; exits 1 naming every problem otherwise.
"""
import sys

from gguf import GGUFReader, GGUFValueType as V, GGMLQuantizationType as T

path = sys.argv[1]
want_tokenizer = "--tokenizer" in sys.argv[2:]
r = GGUFReader(path)
problems = []


def key(name, vtype, required=True):
    f = r.fields.get(name)
    if f is None:
        if required:
            problems.append(f"key {name} missing")
        return None
    if f.types[0] != vtype:
        problems.append(f"key {name} has type {f.types[0].name}, expected {vtype.name}")
        return None
    return f.contents()


assert key("general.architecture", V.STRING) == "llada2", "architecture"
u = lambda k, req=True: key(f"llada2.{k}", V.UINT32, req)
layers, hidden, heads = u("block_count"), u("embedding_length"), u("attention.head_count")
kv, hd = u("attention.head_count_kv"), u("attention.key_length")
u("attention.value_length"), u("context_length"), u("rope.dimension_count")
key("llada2.attention.layer_norm_rms_epsilon", V.FLOAT32)
key("llada2.rope.freq_base", V.FLOAT32)
vocab = u("vocab_size")
ff = u("feed_forward_length")
dense = u("leading_dense_block_count")
experts, moe_ff = u("expert_count"), u("expert_feed_forward_length")
u("expert_used_count"), u("expert_shared_count"), u("expert_group_count"), u("expert_group_used_count")
shared_ff = u("expert_shared_feed_forward_length")
key("llada2.expert_weights_scale", V.FLOAT32)
key("llada2.expert_weights_norm", V.BOOL)
u("expert_gating_func")
if key("diffusion.shift_logits", V.BOOL) is not False:
    problems.append("diffusion.shift_logits must be false")
key("general.file_type", V.UINT32)
model = key("tokenizer.ggml.model", V.STRING)
if want_tokenizer:
    if model != "gpt2":
        problems.append(f"tokenizer.ggml.model is {model!r}, expected gpt2")
    tokens = r.fields["tokenizer.ggml.tokens"]
    if len(tokens.data) != vocab:
        problems.append(f"{len(tokens.data)} tokens for vocab_size {vocab}")
    if len(r.fields["tokenizer.ggml.token_type"].data) != vocab:
        problems.append("token_type is not one per token")
    key("tokenizer.ggml.merges", V.ARRAY)
    key("tokenizer.ggml.pre", V.STRING)
    key("tokenizer.chat_template", V.STRING)
    for k in ["eos_token_id", "mask_token_id"]:
        key(f"tokenizer.ggml.{k}", V.UINT32)

qkv = (heads + 2 * kv) * hd
expect = {"token_embd.weight": [hidden, vocab], "output_norm.weight": [hidden]}
if "output.weight" in {t.name for t in r.tensors}:
    expect["output.weight"] = [hidden, vocab]
F32_ALWAYS = set()
for n in range(layers):
    b = f"blk.{n}."
    expect.update({
        b + "attn_norm.weight": [hidden], b + "attn_qkv.weight": [hidden, qkv],
        b + "attn_q_norm.weight": [hd], b + "attn_k_norm.weight": [hd],
        b + "attn_output.weight": [heads * hd, hidden], b + "ffn_norm.weight": [hidden],
    })
    if n < dense:
        expect.update({b + "ffn_gate.weight": [hidden, ff], b + "ffn_up.weight": [hidden, ff],
                       b + "ffn_down.weight": [ff, hidden]})
    else:
        expect.update({
            b + "ffn_gate_inp.weight": [hidden, experts], b + "exp_probs_b.bias": [experts],
            b + "ffn_gate_exps.weight": [hidden, moe_ff, experts],
            b + "ffn_up_exps.weight": [hidden, moe_ff, experts],
            b + "ffn_down_exps.weight": [moe_ff, hidden, experts],
            b + "ffn_gate_shexp.weight": [hidden, shared_ff], b + "ffn_up_shexp.weight": [hidden, shared_ff],
            b + "ffn_down_shexp.weight": [shared_ff, hidden],
        })
        F32_ALWAYS.add(b + "ffn_gate_inp.weight")

BLOCKS = {T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K}
seen = set()
for t in r.tensors:
    seen.add(t.name)
    shape = [int(x) for x in t.shape]
    if t.name not in expect:
        problems.append(f"unexpected tensor {t.name}")
        continue
    if shape != expect[t.name]:
        problems.append(f"{t.name}: shape {shape}, expected {expect[t.name]}")
    one_d = len(shape) == 1
    if (one_d or t.name in F32_ALWAYS or t.name.endswith("_norm.weight")) and t.tensor_type != T.F32:
        problems.append(f"{t.name}: {t.tensor_type.name}, must be F32")
    if t.tensor_type not in BLOCKS:
        problems.append(f"{t.name}: type {t.tensor_type.name} outside the layout's")
    if t.data_offset % 32:
        problems.append(f"{t.name}: data not 32-byte aligned")
for missing in sorted(set(expect) - seen):
    problems.append(f"tensor {missing} missing")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"{path}: {len(r.tensors)} tensors, {len(r.fields)} keys")
print("ok")
