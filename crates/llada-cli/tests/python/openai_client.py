"""End-to-end check of `llada serve` with the official `openai` Python package.

    python3 openai_client.py BASE_URL API_KEY

Chat (whole and streamed), completions, models, and the SDK's exceptions for bad
requests, an unknown model and a wrong key. Exits non-zero on the first failure.
"""

import sys

import openai

base_url, api_key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)

models = client.models.list()
assert [m.id for m in models.data] == ["default"], models

chat = client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "Reverse: 1 2 3 4"}],
    max_tokens=32,
)
answer = chat.choices[0].message.content
assert chat.object == "chat.completion", chat
assert chat.choices[0].finish_reason == "stop", chat
assert answer.strip(), chat
assert chat.usage.completion_tokens > 0 and chat.usage.prompt_tokens > 0, chat.usage
print("chat:", repr(answer), chat.usage)

pieces, finish, usage = [], None, None
stream = client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "Reverse: 1 2 3 4"}],
    max_tokens=32,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        finish = choice.finish_reason or finish
assert "".join(pieces) == answer, (pieces, answer)
assert finish == "stop", finish
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage
print("stream:", len(pieces), "pieces")

# Diffusion settings travel as extra body fields.
ar = client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "Reverse: 1 2 3 4"}],
    max_tokens=32,
    extra_body={"block_length": 1, "steps": 1},
)
assert ar.usage.forwards == ar.usage.completion_tokens, ar.usage
print("block_length 1:", repr(ar.choices[0].message.content), ar.usage)

completion = client.completions.create(
    model="default",
    prompt="<role>HUMAN</role>Sort: 3 1 2<|role_end|><role>ASSISTANT</role>",
    max_tokens=16,
    stop=["never"],
)
assert completion.object == "text_completion", completion
assert completion.choices[0].text.strip(), completion
print("completion:", repr(completion.choices[0].text))


def expect(exc, call):
    try:
        call()
    except exc as e:
        assert isinstance(e.body, dict) and e.body.get("message"), e.body
        print(f"{exc.__name__}: {e.status_code} {e.body['message'][:70]}")
        return
    raise AssertionError(f"expected {exc.__name__}")


expect(openai.NotFoundError, lambda: client.chat.completions.create(
    model="gpt-4o", messages=[{"role": "user", "content": "hi"}]))
expect(openai.BadRequestError, lambda: client.chat.completions.create(
    model="default", messages=[{"role": "user", "content": "hi"}], temperature=5))
expect(openai.BadRequestError, lambda: client.chat.completions.create(
    model="default", messages=[{"role": "user", "content": "word " * 600}], max_tokens=16))
expect(openai.BadRequestError, lambda: client.chat.completions.create(
    model="default", messages=[{"role": "user", "content": "hi"}], n=3))
bad_key = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
expect(openai.AuthenticationError, lambda: bad_key.models.list())

# Still serving after the errors.
again = client.chat.completions.create(
    model="default", messages=[{"role": "user", "content": "Reverse: 1 2 3 4"}], max_tokens=32)
assert again.choices[0].message.content == answer
print("ok")
