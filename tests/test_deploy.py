"""The shipped Kubernetes manifests and image agree with the server: their flags parse
as the CLI parses them, their probes and ports are the server's, and the grace
period covers the server's own drain."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from torch.distributed.run import get_args_parser

from nanovllm_api.cli import build_parser
from nanovllm_api.config import ServerConfig

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def manifests(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text())}


def server_config(args: list[str]) -> ServerConfig:
    """The settings the server would start with: the CLI's parsing, then validation."""
    settings = vars(build_parser().parse_args(args))
    settings.pop("list_plugins")
    return ServerConfig(**settings)


def expand(command: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in a container's command."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], part) for part in command]


def check_serving_container(container: dict, config: ServerConfig, grace_s: int) -> None:
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == config.port and config.host == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert grace_s > config.shutdown_timeout  # the drain ends before the kubelet's SIGKILL


def test_replicas_deployment_and_service():
    docs = manifests("replicas.yaml")
    pod = docs["Deployment"]["spec"]["template"]
    [container] = pod["spec"]["containers"]
    config = server_config(container["args"])
    check_serving_container(container, config, pod["spec"]["terminationGracePeriodSeconds"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.port) and annotations["prometheus.io/path"] == "/metrics"
    assert [e["name"] for e in container["env"]] == ["NANOVLLM_API_KEY"]  # the setting's environment name
    service = docs["Service"]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("worker_index", [0, 1])
def test_tensor_parallel_leader_worker_set(worker_index):
    docs = manifests("tensor-parallel-lws.yaml")
    group = docs["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    template = group["leaderTemplate"] if worker_index == 0 else group["workerTemplate"]
    [container] = template["spec"]["containers"]
    env = {"LWS_GROUP_SIZE": str(group["size"]), "LWS_WORKER_INDEX": str(worker_index),
           "LWS_LEADER_ADDRESS": "nanovllm-tp-0.nanovllm-tp"}
    command = expand(container["command"], env)
    assert command[0] == "torchrun"
    launch = get_args_parser().parse_args(command[1:])
    assert launch.module and launch.training_script == "nanovllm_api"
    assert int(launch.nnodes) == group["size"] and launch.node_rank == worker_index
    config = server_config(launch.training_script_args)
    assert config.tensor_parallel_size == group["size"] * int(launch.nproc_per_node)
    if worker_index == 0:
        check_serving_container(container, config, template["spec"]["terminationGracePeriodSeconds"])
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["rendezvous"] == launch.master_port
        service = docs["Service"]["spec"]
        assert service["selector"]["role"] == template["metadata"]["labels"]["role"]
    leader = expand(group["leaderTemplate"]["spec"]["containers"][0]["command"], env)
    leader_config = server_config(get_args_parser().parse_args(leader[1:]).training_script_args)
    assert (config.model, config.tensor_parallel_size) == (leader_config.model, leader_config.tensor_parallel_size)


def test_the_image_runs_the_server_with_its_flags():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["nanovllm-api"]' in dockerfile
    default_args = yaml.safe_load(re.search(r"^CMD (.*)$", dockerfile, re.M).group(1))
    assert server_config(default_args).host == "0.0.0.0"
    for package in ("plugins/qwen3", "plugins/sampling", "plugins/bert"):
        assert package in dockerfile
