"""Chat, completion and streaming against a running nanovllm server, with the official openai client.

Start the server first (`make serve`, or `nanovllm-api --port 8000`), then:
    python examples/example_api_server.py [--base-url http://127.0.0.1:8000/v1] [--api-key KEY]
"""

import argparse

from openai import OpenAI

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
parser.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
args = parser.parse_args()

client = OpenAI(base_url=args.base_url, api_key=args.api_key)
model = client.models.list().data[0].id
print(f"model: {model}\n")

reply = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0
)
print("chat:", reply.choices[0].message.content, f"({reply.usage.completion_tokens} tokens)")

completion = client.completions.create(model=model, prompt="The three primary colours are", max_tokens=20, temperature=0)
print("completion:", completion.choices[0].text)

print("streaming: ", end="", flush=True)
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Write a haiku about the sea."}], temperature=0.7, seed=1, stream=True
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
