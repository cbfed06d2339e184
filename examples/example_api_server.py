"""Chat, completion and streaming against a running nanovllm server, with the official
openai client: the examples of the original nanovllm server's README, unchanged.

Start the server first, as that README does (any model name is accepted there):
    python -m nanovllm.entrypoints.api_server --model /path/to/model
then:
    python examples/example_api_server.py [--base-url http://localhost:8000/v1] [--model qwen] [--api-key KEY]

Against `nanovllm-api` (which answers unknown model names with 404), pass --model
with a served name (`curl localhost:8000/v1/models`), or start it with --accept-any-model-name.
"""

import argparse

import openai

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--base-url", default="http://localhost:8000/v1")
parser.add_argument("--model", default="qwen", help="the model name to send")
parser.add_argument("--api-key", default="dummy", help="the server's --api-key, if it has one")
args = parser.parse_args()

client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)

# Chat Completions
response = client.chat.completions.create(
    model=args.model,
    messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    max_tokens=100,
    temperature=0.7,
)
print("chat:", response.choices[0].message.content)

# Text Completions
response = client.completions.create(model=args.model, prompt="Once upon a time,", max_tokens=50, temperature=0.7)
print("completion:", response.choices[0].text)

# Streaming
print("streaming: ", end="", flush=True)
stream = client.chat.completions.create(
    model=args.model, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=100, stream=True
)
for chunk in stream:
    if chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
