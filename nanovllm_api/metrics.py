"""Prometheus metrics: engine state read at scrape time, request latencies observed as they finish."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from nanovllm_core.engine_client import EngineClient, EngineState

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# the scheduler's state, one series per engine replica (label `replica`): name -> (help, EngineStats field)
ENGINE_GAUGES = {
    "nanovllm_num_requests_running": ("Sequences in the running batch.", "num_running"),
    "nanovllm_num_requests_waiting": ("Sequences waiting for a slot.", "num_waiting"),
    "nanovllm_kv_cache_usage_ratio": ("Share of KV-cache blocks in use.", "kv_cache_usage"),
    "nanovllm_prefix_cache_hit_rate": ("Prompt tokens found in the prefix cache / looked up.", "prefix_cache_hit_rate"),
    "nanovllm_num_preemptions": ("Sequences preempted so far.", "num_preemptions"),
}


class EngineStateCollector:
    """The engine's gauges, read from each replica when scraped (0 while one loads or after it died)."""

    def __init__(self, engine: EngineClient):
        self.engine = engine

    def collect(self):
        replicas = self.engine.replica_statuses()
        for name, (description, field) in ENGINE_GAUGES.items():
            family = GaugeMetricFamily(name, description, labels=["replica"])
            for index, replica in enumerate(replicas):
                family.add_metric([str(index)], float(getattr(replica.stats, field)) if replica.stats else 0.0)
            yield family
        serving = GaugeMetricFamily("nanovllm_replicas_serving", "Engine replicas that serve requests.")
        serving.add_metric([], sum(replica.state is EngineState.READY for replica in replicas))
        yield serving


class Metrics:
    def __init__(self, engine: EngineClient):
        self.engine = engine
        self.registry = CollectorRegistry()
        self.registry.register(EngineStateCollector(engine))
        self.prompt_tokens = Counter("nanovllm_prompt_tokens", "Prompt tokens processed.", registry=self.registry)
        self.generation_tokens = Counter("nanovllm_generation_tokens", "Tokens generated.", registry=self.registry)
        self.requests = Counter(
            "nanovllm_request_success", "Finished sequences by finish reason.", ["finish_reason"], registry=self.registry
        )
        self.ttft = Histogram(
            "nanovllm_time_to_first_token_seconds", "Arrival to first token.", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.tpot = Histogram(
            "nanovllm_time_per_output_token_seconds", "Between consecutive tokens.", buckets=TOKEN_LATENCY_BUCKETS, registry=self.registry
        )
        self.e2e = Histogram(
            "nanovllm_e2e_request_latency_seconds", "Arrival to last token.", buckets=LATENCY_BUCKETS, registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def summary(self) -> dict:
        """What the chat page's status strip shows: the engine's state, its running and waiting
        sequences (every replica's), and the tokens generated so far (the page takes the rate)."""
        replicas = self.engine.replica_statuses()
        stats = [replica.stats for replica in replicas if replica.stats is not None]
        return {
            "state": self.engine.state.value,
            "replicas_serving": sum(replica.state is EngineState.READY for replica in replicas),
            "running": sum(s.num_running for s in stats),
            "waiting": sum(s.num_waiting for s in stats),
            "generated_tokens": int(self.registry.get_sample_value("nanovllm_generation_tokens_total") or 0),
        }


class RequestTimer:
    """Latencies of one API request, reported to ``Metrics`` when it ends."""

    def __init__(self, metrics: Metrics, num_prompt_tokens: int):
        self.metrics = metrics
        self.start = self.last = time.monotonic()
        self.first_token_seen = False
        metrics.prompt_tokens.inc(num_prompt_tokens)

    def tokens(self, count: int) -> None:
        """``count`` new tokens arrived (none for an embedding)."""
        if not count:
            return
        moment = time.monotonic()
        if self.first_token_seen:
            self.metrics.tpot.observe(moment - self.last)
        else:
            self.metrics.ttft.observe(moment - self.start)
            self.first_token_seen = True
        self.last = moment
        self.metrics.generation_tokens.inc(count)

    def finished(self, finish_reason: str | None) -> None:
        self.metrics.requests.labels(finish_reason=finish_reason or "abort").inc()
        self.metrics.e2e.observe(time.monotonic() - self.start)
