"""End-to-end check of `llada serve`'s Ollama API with the official `ollama` Python package.

    python3 ollama_client.py BASE_URL API_KEY

Chat and generate (whole and streamed), list, show, ps, and `ollama.ResponseError` with
the right status for bad requests, an unknown model and a wrong key. Exits non-zero on
the first failure.
"""

import sys

import ollama

base_url, api_key = sys.argv[1], sys.argv[2]
client = ollama.Client(host=base_url, headers={"Authorization": f"Bearer {api_key}"})
messages = [{"role": "user", "content": "Reverse: 1 2 3 4"}]

listed = client.list()
assert [m.model for m in listed.models] == ["default"], listed
details = listed.models[0].details
assert details.family == "llada2" and details.parameter_size, details
print("list:", listed.models[0].model, details.parameter_size, details.quantization_level)

shown = client.show("default")
assert shown.capabilities == ["completion"], shown.capabilities
assert shown.modelinfo["general.architecture"] == "llada2", shown.modelinfo
assert "block_length" in shown.parameters, shown.parameters
print("show:", shown.details.format, shown.modelinfo["llada2.block_count"], "layers")

running = client.ps()
assert running.models[0].model == "default", running
assert running.models[0].expires_at.year > 2100, running
print("ps:", running.models[0].size, "bytes")

chat = client.chat(model="default", messages=messages, options={"num_predict": 32})
answer = chat.message.content
assert chat.done and chat.done_reason == "stop", chat
assert chat.message.role == "assistant" and answer.strip(), chat
assert chat.eval_count > 0 and chat.prompt_eval_count > 0, chat
assert chat.total_duration >= chat.eval_duration > 0, chat
print("chat:", repr(answer), chat.eval_count, "tokens in", chat.total_duration, "ns")

pieces, last = [], None
for part in client.chat(model="default", messages=messages, options={"num_predict": 32}, stream=True):
    pieces.append(part.message.content)
    last = part
assert "".join(pieces) == answer, (pieces, answer)
assert last.done and last.done_reason == "stop" and last.eval_count == chat.eval_count, last
print("chat stream:", len(pieces), "parts")

# Diffusion settings travel in `options`, next to Ollama's.
ar = client.chat(
    model="default:latest",
    messages=messages,
    options={"num_predict": 32, "block_length": 1, "steps": 1, "temperature": 0},
    keep_alive="5m",
)
assert ar.message.content.strip(), ar
print("block_length 1:", repr(ar.message.content))

generated = client.generate(model="default", prompt="Reverse: 1 2 3 4", options={"num_predict": 32})
assert generated.response == answer, (generated.response, answer)
assert generated.done_reason == "stop", generated
streamed = "".join(
    part.response
    for part in client.generate(
        model="default", prompt="Reverse: 1 2 3 4", options={"num_predict": 32}, stream=True
    )
)
assert streamed == answer, (streamed, answer)
raw = client.generate(
    model="default",
    prompt="<role>HUMAN</role>Sort: 3 1 2<|role_end|><role>ASSISTANT</role>",
    raw=True,
    options={"num_predict": 16, "stop": ["never"]},
)
assert raw.response.strip(), raw
print("generate:", repr(generated.response), "raw:", repr(raw.response))


def expect(status, call):
    try:
        result = call()
        # A stream raises as it is read.
        if not hasattr(result, "done"):
            list(result)
    except ollama.ResponseError as e:
        assert e.status_code == status, (e.status_code, e.error)
        assert isinstance(e.error, str) and e.error, e.error
        print(f"ResponseError: {e.status_code} {e.error[:70]}")
        return
    raise AssertionError(f"expected a ResponseError {status}")


expect(404, lambda: client.chat(model="llama3", messages=messages))
expect(404, lambda: client.show("llama3"))
expect(400, lambda: client.chat(model="default", messages=messages, options={"temperature": 5}))
expect(400, lambda: client.chat(model="default", messages=messages, options={"num_predict": -3}))
expect(400, lambda: client.chat(model="default", messages=messages, format="json"))
expect(400, lambda: client.chat(model="default", messages=messages, stream=True, format="json"))
expect(400, lambda: client.generate(model="default", prompt="word " * 600))
expect(400, lambda: client.generate(model="default", prompt="hi", images=["aGk="]))
bad_key = ollama.Client(host=base_url, headers={"Authorization": "Bearer wrong"})
expect(401, lambda: bad_key.list())

# Still serving after the errors.
again = client.chat(model="default", messages=messages, options={"num_predict": 32})
assert again.message.content == answer
print("ok")
