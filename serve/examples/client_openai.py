"""Call `trtbuild serve` with the official openai client.

    trtbuild serve fp16 --api-key secret &          # wait for: curl localhost:8000/health -> 200
    python serve/examples/client_openai.py --base-url http://127.0.0.1:8000/v1 --api-key secret
"""

from __future__ import annotations

import argparse

import openai


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = client.models.list().data[0].id  # the server serves one engine
    print(f"model: {model}")

    # Chat: the system message is joined into the last user turn (Mistral v3, through mistral-common).
    messages = [{"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=48, temperature=0)
    print("chat:", reply.choices[0].message.content, f"({reply.choices[0].finish_reason}, {reply.usage})")

    # Streaming, with the usage chunk at the end.
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=48, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    print("stream: ", end="")
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
        elif chunk.usage:
            print(f"\n  usage: {chunk.usage.completion_tokens} completion tokens")

    # Completions with logprobs, a stop string and vLLM-style extensions (extra_body).
    text = client.completions.create(model=model, prompt="Once upon a time", max_tokens=24, temperature=0,
                                     stop=["."], logprobs=2, extra_body={"top_k": 20})
    choice = text.choices[0]
    print("completion:", repr(choice.text), choice.finish_reason, choice.logprobs.tokens[:5])

    # n samples, reproducible with a seed (choice i uses seed + i).
    samples = client.chat.completions.create(model=model, messages=messages, max_tokens=16, n=3, seed=1234,
                                             temperature=0.8)
    for c in samples.choices:
        print(f"sample {c.index}:", c.message.content)

    # Errors come back as openai exceptions with OpenAI's error body.
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=100_000)
    except openai.BadRequestError as exc:
        print("error:", exc.code, "-", exc.message[:90], "...")


if __name__ == "__main__":
    main()
