"""Builds the small byte-level BPE test tokenizer in ./tokenizer (run once; the output
is committed). Special tokens follow LLaDA2's names; the vocabulary is tiny on purpose
so that multi-byte characters (accents, CJK, emoji) are split over several tokens."""
import json
import pathlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL = ["<|endoftext|>", "<|mask|>", "<|role_end|>", "<role>", "</role>"]
TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Diffusion language models unmask many tokens per forward pass, block by block.",
    "What is 12 plus 30? The answer is 42.",
    "Sort these numbers: 5 3 9 1. Reverse the word hello.",
    "SYSTEM HUMAN ASSISTANT detailed thinking off",
    "Café, naïve, déjà vu — 你好，世界。 🙂 emoji and accents.",
]

tok = Tokenizer(models.BPE(unk_token=None))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=400,
    special_tokens=SPECIAL,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
)
tok.train_from_iterator(TEXT * 20, trainer)
out = pathlib.Path(__file__).parent / "tokenizer"
out.mkdir(exist_ok=True)
tok.save(str(out / "tokenizer.json"))

TEMPLATE = (
    "{%- set ns = namespace(system=false) -%}\n"
    "{%- for m in messages -%}{%- if m['role'] == 'system' -%}{%- set ns.system = true -%}{%- endif -%}{%- endfor -%}\n"
    "{%- if not ns.system -%}<role>SYSTEM</role>detailed thinking off<|role_end|>{%- endif -%}\n"
    "{%- for m in messages -%}\n"
    "{%- if m['role'] == 'system' -%}<role>SYSTEM</role>{{ m['content'].strip() }}\ndetailed thinking off<|role_end|>\n"
    "{%- elif m['role'] == 'user' -%}<role>HUMAN</role>{{ m['content'] }}<|role_end|>\n"
    "{%- elif m['role'] == 'assistant' -%}<role>ASSISTANT</role>{{ m['content'] | trim }}<|role_end|>\n"
    "{%- else -%}{{ raise_exception('unknown role ' + m['role']) }}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}<role>ASSISTANT</role>{%- endif -%}"
)
config = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "mask_token": "<|mask|>",
    "additional_special_tokens": ["<|role_end|>", "<role>", "</role>"],
    "chat_template": TEMPLATE,
    "model_max_length": 1024,
}
(out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
