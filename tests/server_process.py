"""A real `nanovllm-api` server in a subprocess on a free loopback port, and
checks shared by the tests that talk to one."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nanovllm_api.testing import ServerProcess, free_port, serve  # noqa: F401  (tests import them from here)


# The SmolLM2 file unquantized in float32: the answers tests quote are that model's. By
# default the file runs as its own int4 (Q4_1), whose greedy answers differ at near ties
# (first token of the France prompt); test_quantization.py checks that precision.
FLOAT32_UNQUANTIZED = ("--dtype", "float32", "--quantization", "none")


def log_text(server: ServerProcess) -> str:
    return Path(server.log.name).read_text()


def metric(server: ServerProcess, name: str, default: float | None = None) -> float:
    """A sample's value; ``default`` for a labelled one not yet seen."""
    text = httpx.get(f"{server.url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    if default is not None:
        return default
    raise KeyError(name)


def metric_by_label(server: ServerProcess, name: str, label: str) -> dict[str, float]:
    """A labelled sample's value for each value of ``label``, e.g. each replica's."""
    text = httpx.get(f"{server.url}/metrics").text
    return {sample.labels[label]: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples if sample.name == name}


def sse_events(lines):
    for line in lines:
        if line.startswith("data: "):
            yield line[len("data: "):]


def wait_for(condition, timeout: float = 120) -> None:
    """Until ``condition()``; failing after ``timeout`` seconds, which mean "hung", not "slow"."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out: hung"
        time.sleep(0.05)


def assert_openai_error(response, status, error_type, param=None, code=None, contains=""):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type and contains in error["message"]
    if param:
        assert error["param"] == param
    if code:
        assert error["code"] == code
