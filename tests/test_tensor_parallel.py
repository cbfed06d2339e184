"""Tensor parallelism over worker processes (gloo on the CPU)."""

import signal
import time

import httpx
import openai
import psutil
import pytest
import torch

from conftest import CHAT_MESSAGES, chat_prompt
from nanovllm_core import LLM, SamplingParams
from nanovllm_core.testing import LogitsRecorder, LogitsRecorderPlugin, registered_plugin
from server_process import ServerProcess
from tiny_models import make_tiny_checkpoint


def no_worker_left():
    """No worker process of an engine of this process is left. Its workers are this process's own
    children; a server that another test module shares (a subprocess) has processes of its own,
    its grammar workers, which are not these. multiprocessing's resource tracker may stay; it is
    not a worker and ends with this process."""
    return not [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory, smollm2_tokenizer):
    return make_tiny_checkpoint("Qwen3ForCausalLM", tmp_path_factory.mktemp("qwen3-tp"), smollm2_tokenizer)


def logits_and_tokens(checkpoint, tensor_parallel_size):
    prompts = [[(17 * i + 5 * j) % 40000 + 3 for j in range(11 + 9 * i)] for i in range(3)]
    LogitsRecorder.records.clear()
    with registered_plugin(LogitsRecorderPlugin()):
        with LLM(str(checkpoint), dtype="float32", sampler="record-logits", block_size=4,
                 max_num_batched_tokens=16, tensor_parallel_size=tensor_parallel_size) as llm:
            params = [SamplingParams(max_tokens=8, ignore_eos=True, seed=i, prompt_logprobs=2) for i in range(len(prompts))]
            results = llm.generate(prompts, params, use_tqdm=False)
    # every prompt token's logprob: the LM head's all-gather, run by every rank on the same rows
    scores = torch.tensor([s.logprob for r in results for s in r["prompt_logprobs"][1:]])
    logits = {seed: torch.stack(rows) for seed, rows in LogitsRecorder.records.items()}
    return logits, [r["token_ids"] for r in results], scores


def test_tp2_matches_tp1_on_qwen3(qwen3):
    single_logits, single_tokens, single_scores = logits_and_tokens(qwen3, 1)
    split_logits, split_tokens, split_scores = logits_and_tokens(qwen3, 2)
    assert split_tokens == single_tokens
    torch.testing.assert_close(split_scores, single_scores, atol=1e-4, rtol=0)
    for seed, expected in single_logits.items():
        torch.testing.assert_close(split_logits[seed], expected, atol=1e-4, rtol=0)  # float32, summed in another order
    assert no_worker_left()


def test_smollm2_tp3_matches_tp1(smollm2_llm, smollm2_path, smollm2_tokenizer):
    prompts = [chat_prompt(smollm2_tokenizer, m) for m in CHAT_MESSAGES[:4]]
    params = SamplingParams(temperature=0, max_tokens=24)
    expected = [r["token_ids"] for r in smollm2_llm.generate(prompts, params, use_tqdm=False)]
    # unquantized, as smollm2_llm
    with LLM(str(smollm2_path), dtype="float32", quantization="none", tensor_parallel_size=3) as llm:
        assert [r["token_ids"] for r in llm.generate(prompts, params, use_tqdm=False)] == expected
    assert no_worker_left()


def test_sizes_that_do_not_divide_the_heads_are_refused(qwen3):
    with pytest.raises(ValueError, match=r"tensor_parallel_size 3 must divide the number of attention heads \(4\)"):
        LLM(str(qwen3), dtype="float32", tensor_parallel_size=3)
    assert no_worker_left()


def test_server_with_tp2_streams_and_fails_safe_when_a_worker_dies(qwen3, tmp_path):
    server = ServerProcess("--model", str(qwen3), "--dtype", "float32", "--tensor-parallel-size", "2",
                           log_path=tmp_path / "server.log")
    try:
        server.wait_healthy()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        messages = [{"role": "user", "content": "Hello"}]
        stream = list(client.chat.completions.create(
            model=qwen3.name, messages=messages, temperature=0, max_tokens=12, extra_body={"ignore_eos": True},
            stream=True, stream_options={"include_usage": True},
        ))
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        whole = client.chat.completions.create(model=qwen3.name, messages=messages, temperature=0, max_tokens=12,
                                               extra_body={"ignore_eos": True})
        assert stream[-1].usage.completion_tokens == 12 and streamed == whole.choices[0].message.content
        workers = psutil.Process(server.process.pid).children(recursive=True)
        assert workers
        for worker in workers:
            worker.kill()
        deadline = time.monotonic() + 120
        while httpx.get(f"{server.url}/health").status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert httpx.get(f"{server.url}/health").status_code == 503
        failed = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert failed.status_code == 503 and failed.json()["error"]["type"] == "service_unavailable_error"
        # a server whose engine died exits non-zero by itself, so a supervisor restarts it
        assert server.process.wait(timeout=120) != 0
    finally:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=120)
    assert not any("spawn_main" in " ".join(p.cmdline()) for p in psutil.process_iter() if p.pid != psutil.Process().pid
                   and _safe_ppid(p) == server.process.pid)


def test_server_exits_cleanly_on_sigterm_with_workers(qwen3, tmp_path):
    server = ServerProcess("--model", str(qwen3), "--dtype", "float32", "--tensor-parallel-size", "2",
                           log_path=tmp_path / "server.log").wait_healthy()
    children = psutil.Process(server.process.pid).children(recursive=True)
    # the spawned ranks; multiprocessing's resource tracker ends by itself once its parent is gone
    workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert workers
    assert server.stop() == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def _safe_ppid(process) -> int | None:
    try:
        return process.ppid()
    except psutil.Error:
        return None


def test_torchrun_launch_runs_the_same_code(smollm2_path, tmp_path):
    """Every rank runs the user's script, as torchrun does across machines; ranks > 0 become workers."""
    import subprocess
    import sys

    from server_process import free_port

    script = tmp_path / "generate.py"
    script.write_text(
        "from nanovllm_core import LLM, SamplingParams\n"
        "prompt = '<|im_start|>user\\nWhat is the capital of France?<|im_end|>\\n<|im_start|>assistant\\n'\n"
        f"with LLM({str(smollm2_path)!r}, dtype='float32', tensor_parallel_size=3) as llm:\n"
        "    print('ANSWER', llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0]['text'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), str(script)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("ANSWER") == 1 and "ANSWER The capital of France is Paris." in result.stdout


def test_data_parallel_replicas_of_tensor_parallel_engines(qwen3, tmp_path):
    """--data-parallel-size 2 x --tensor-parallel-size 2: two replicas, each spawning its own
    worker rank on the replica's core, answer as one engine does; SIGTERM leaves no process."""
    prompts = [[(13 * i + 7 * j) % 40000 + 3 for j in range(9 + 5 * i)] for i in range(4)]
    with LLM(str(qwen3), dtype="float32") as llm:
        expected = [r["text"] for r in llm.generate(
            prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)]
    server = ServerProcess("--model", str(qwen3), "--dtype", "float32", "--data-parallel-size", "2",
                           "--tensor-parallel-size", "2", log_path=tmp_path / "server.log").wait_healthy()
    engines = [p for p in psutil.Process(server.process.pid).children(recursive=True)
               if "spawn_main" in " ".join(p.cmdline())]
    assert len(engines) == 4  # two replicas and a worker rank of each
    body = {"model": qwen3.name, "temperature": 0, "max_tokens": 8, "ignore_eos": True}
    answers = [httpx.post(f"{server.url}/v1/completions", json={**body, "prompt": prompt}, timeout=120).json()
               for prompt in prompts]
    assert [a["choices"][0]["text"] for a in answers] == expected
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=120) == 0
    psutil.wait_procs(engines, timeout=120)
    assert not [p.pid for p in engines if p.is_running()]
