"""Data parallelism: N engine replicas, each in a process of its own with its own KV cache and
its own cores (or GPUs), behind one ``EngineClient`` (``DataParallelClient``).

- ``placement``: which CPUs or GPUs each replica gets;
- ``replica``: the replica's side, an ``AsyncLLM`` serving the commands on its pipe;
- ``client``: the server's side, which starts, watches and talks to the replicas;
- ``routing``: which replica a request goes to, a pure function of their loads and the
  prompt's cached prefix.
"""

from nanovllm_core.engine.data_parallel.client import DataParallelClient

__all__ = ["DataParallelClient"]
