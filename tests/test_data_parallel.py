"""Data-parallel replicas behind one server (--data-parallel-size): the same greedy answers
as one engine, prefix affinity, a replica's death costing only its own requests, and a
shutdown that drains every replica and leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import httpx
import psutil
import pytest

from nanovllm_core.engine.data_parallel.placement import parse_cpu_list, replica_cpu_sets
from nanovllm_core.engine.data_parallel.routing import PrefixAffinity, Route, choose_replica
from nanovllm_core.sampling_params import SamplingParams
from server_process import (
    FLOAT32_UNQUANTIZED,
    ServerProcess,
    log_text,
    metric,
    metric_by_label,
    serve,
    sse_events,
    wait_for,
)

HUNG_S = 120
# raw prompts with no shared KV block, so that routing is by load alone
PROMPTS = ["The capital of France is", "Water boils at a temperature of", "A haiku about the sea:\n",
           "def fibonacci(n):"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Two replicas of one thread each, pinned to the machine's first two CPUs."""
    yield from serve(tmp_path_factory, "data-parallel", *FLOAT32_UNQUANTIZED, "--data-parallel-size", "2",
                     "--threads-per-replica", "1", "--max-num-seqs", "8", "--max-model-len", "512")


def replica_pids(server) -> dict[str, int]:
    return {index: int(pid) for index, pid in re.findall(r"replica (\d+): process (\d+)", log_text(server))}


def complete(server, prompt: str, max_tokens: int = 12, **fields) -> dict:
    body = {"model": "SmolLM2-135M-Instruct", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **fields}
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=HUNG_S).json()


def stream(server, prompt: str, max_tokens: int, outcome: dict) -> None:
    """Stream a completion; ``outcome[prompt]``: its text once [DONE], or the error event that
    ended it, or None if the stream broke off."""
    body = {"model": "SmolLM2-135M-Instruct", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}
    text, outcome[prompt] = "", None
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=HUNG_S) as response:
        for event in sse_events(response.iter_lines()):
            if event == "[DONE]":
                outcome[prompt] = text
                return
            chunk = json.loads(event)
            if "error" in chunk:
                outcome[prompt] = chunk["error"]
                return
            text += chunk["choices"][0]["text"]


# placement and routing, without a server


def test_cpu_sets_split_the_usable_cores_without_overlap():
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    usable = sorted(os.sched_getaffinity(0))
    sets = replica_cpu_sets(len(usable), None)
    assert sorted(cpu for cpus in sets for cpu in cpus) == usable and all(len(cpus) == 1 for cpus in sets)
    assert replica_cpu_sets(1, 1) == [usable[:1]]
    with pytest.raises(ValueError, match="need"):
        replica_cpu_sets(len(usable) + 1, None)


def test_prefix_affinity_needs_half_the_prompt_cached():
    affinity = PrefixAffinity(block_size=4)
    system = list(range(100, 104))  # one shared block, as a chat template's system prompt
    first = affinity.prefix_hashes(system + list(range(12)))
    affinity.record(first, replica=1)
    assert affinity.owner(first) == 1
    assert affinity.owner(affinity.prefix_hashes(system + list(range(50, 62)))) is None  # 1 block of 4
    assert affinity.owner(affinity.prefix_hashes(system + list(range(4)) + list(range(70, 78)))) == 1  # 2 of 4
    assert affinity.owner(affinity.prefix_hashes([1, 2, 3])) is None  # no full block
    small = PrefixAffinity(block_size=4, capacity=2)
    small.record(first, replica=0)
    assert small.owner(first[:1]) is None and small.owner(first) == 0  # the oldest prefixes forgotten first


def test_routing_prefers_the_cached_prefix_unless_its_replica_is_overloaded():
    """The least loaded replica (ties rotating from ``start``), unless the one caching the
    prompt's prefix has room and at most twice the least load plus one."""
    assert choose_replica({0: 2, 1: 2, 2: 2}, None, max_num_seqs=8, start=1, num_replicas=3) == Route(1, False)
    assert choose_replica({0: 2, 1: 2, 2: 2}, None, max_num_seqs=8, start=3, num_replicas=3) == Route(0, False)
    assert choose_replica({0: 1, 1: 3}, owner=1, max_num_seqs=8, start=0, num_replicas=2) == Route(1, True)
    assert choose_replica({0: 1, 1: 4}, owner=1, max_num_seqs=8, start=0, num_replicas=2) == Route(0, False)
    assert choose_replica({0: 7, 1: 8}, owner=1, max_num_seqs=8, start=0, num_replicas=2) == Route(0, False)
    assert choose_replica({0: 3}, owner=1, max_num_seqs=8, start=0, num_replicas=2) == Route(0, False)  # full
    assert choose_replica({0: 0, 1: 0}, owner=0, max_num_seqs=8, start=1, num_replicas=2) == Route(0, True)


# served


def test_two_replicas_answer_like_one_engine(server, smollm2_llm):
    expected = [out["text"] for out in smollm2_llm.generate(
        PROMPTS, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)]
    answers: dict = {}
    threads = [threading.Thread(target=lambda p=p: answers.update({p: complete(server, p)})) for p in PROMPTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answers[p]["choices"][0]["text"] for p in PROMPTS] == expected
    streamed: dict = {}
    stream(server, PROMPTS[0], 12, streamed)
    assert streamed[PROMPTS[0]] == expected[0]
    two = complete(server, PROMPTS[1], n=2)
    assert [choice["text"] for choice in two["choices"]] == [expected[1]] * 2
    assert metric(server, "nanovllm_replicas_serving") == 2
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


def test_a_shared_prefix_goes_where_it_is_cached(server):
    """Sequential requests find every replica idle; without affinity they would take turns,
    and both replicas would see a cache hit."""
    prefix = " ".join(f"item {i}," for i in range(60))  # far more than half of each prompt
    for suffix in ("red", "green", "blue", "yellow"):
        complete(server, f"{prefix} and finally {suffix}", max_tokens=2)
    hit_rates = sorted(metric_by_label(server, "nanovllm_prefix_cache_hit_rate", "replica").values())
    assert hit_rates[0] == 0 and hit_rates[1] > 0.5


def stream_on_both_replicas(server, max_tokens: int) -> tuple[dict, list[threading.Thread]]:
    """Two streams running on each replica: their outcomes (see ``stream``) and readers."""
    outcome: dict = {}
    readers = [threading.Thread(target=stream, args=(server, p, max_tokens, outcome)) for p in PROMPTS]
    for reader in readers:
        reader.start()
    running = lambda: metric_by_label(server, "nanovllm_num_requests_running", "replica")  # noqa: E731
    wait_for(lambda: running() == {"0": 2, "1": 2}, HUNG_S)
    return outcome, readers


def failed_streams(outcome: dict, readers: list[threading.Thread]) -> list[str]:
    """Once the readers are done: the prompts whose streams ended in an error."""
    for reader in readers:
        reader.join(timeout=HUNG_S * 5)
    failed = [p for p in PROMPTS if isinstance(outcome[p], dict)]
    assert len(failed) == 2 and all("engine failed" in outcome[p]["message"] for p in failed), outcome
    return failed


def test_a_replica_that_dies_fails_only_its_own_requests(server):
    outcome, readers = stream_on_both_replicas(server, 160)
    os.kill(replica_pids(server)["1"], signal.SIGKILL)
    failed = failed_streams(outcome, readers)
    assert "replica 1 stopped" in log_text(server)  # the operator learns which
    assert all(isinstance(outcome[p], str) for p in PROMPTS if p not in failed)  # the others streamed to the end
    assert httpx.get(f"{server.url}/health").json() == {"status": "degraded", "replicas_serving": 1, "replicas": 2}
    assert metric(server, "nanovllm_replicas_serving") == 1
    assert complete(server, PROMPTS[0])["choices"][0]["text"]  # the survivor serves on


REPLICA_TIMEOUT_S = 3


def test_a_replica_that_hangs_is_killed_and_fails_only_its_own_requests(tmp_path):
    """A replica that stops (SIGSTOP: alive, answering nothing) is found by its missing
    heartbeats within --replica-timeout and the watchdog's 0.5 s, killed, and its requests
    fail; /health answers all along and says degraded; the other replica serves on."""
    server = ServerProcess("--data-parallel-size", "2", "--threads-per-replica", "1", "--max-num-seqs", "4",
                           "--max-model-len", "256", "--replica-timeout", str(REPLICA_TIMEOUT_S),
                           log_path=tmp_path / "server.log").wait_healthy()
    hung = replica_pids(server)["1"]
    try:
        outcome, readers = stream_on_both_replicas(server, 200)
        os.kill(hung, signal.SIGSTOP)
        stopped = time.monotonic()
        while (health := httpx.get(f"{server.url}/health", timeout=1.0).json())["status"] == "ok":
            assert time.monotonic() - stopped < HUNG_S
            time.sleep(0.1)
        found_after = time.monotonic() - stopped
        assert health == {"status": "degraded", "replicas_serving": 1, "replicas": 2}
        assert REPLICA_TIMEOUT_S <= found_after < HUNG_S, found_after
        failed = failed_streams(outcome, readers)
        assert all(isinstance(outcome[p], str) and outcome[p] for p in PROMPTS if p not in failed)
        assert "killed as hung" in log_text(server)
        wait_for(lambda: not psutil.pid_exists(hung) or psutil.Process(hung).status() == psutil.STATUS_ZOMBIE)
        assert complete(server, PROMPTS[0])["choices"][0]["text"]
    finally:
        if psutil.pid_exists(hung):
            os.kill(hung, signal.SIGCONT)
        assert server.stop() == 0


def test_sigterm_drains_the_replicas_and_leaves_no_process(server):
    children = psutil.Process(server.process.pid).children(recursive=True)
    outcome: dict = {}
    reader = threading.Thread(target=stream, args=(server, PROMPTS[2], 24, outcome))
    reader.start()
    wait_for(lambda: metric(server, "nanovllm_num_requests_running") == 1, HUNG_S)
    server.process.send_signal(signal.SIGTERM)
    reader.join(timeout=HUNG_S)
    assert server.process.wait(timeout=HUNG_S) == 0
    assert isinstance(outcome[PROMPTS[2]], str) and outcome[PROMPTS[2]]
    psutil.wait_procs(children, timeout=HUNG_S)
    assert not [child.pid for child in children if child.is_running()]


def test_a_server_whose_replicas_all_fail_to_load_exits_non_zero(tmp_path):
    """Regression: the server stopped its replicas on the way out, which overwrote the
    engine's DEAD with STOPPED, and it exited 0."""
    # SmolLM2's 9 heads cannot be split in two: each replica fails as it loads
    server = ServerProcess("--data-parallel-size", "2", "--tensor-parallel-size", "2", log_path=tmp_path / "server.log")
    assert server.process.wait(timeout=HUNG_S) != 0
    assert "must divide the number of attention heads" in log_text(server)
