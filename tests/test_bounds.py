"""The table of bounds: every number a request body may carry has a range that the engine
can hold, published in /openapi.json, and the engine's own check refuses the rest."""

import math

import pytest

from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.model_info import ModelInfo
from nanovllm_core.sampling_params import INT64_MAX, INT64_MIN, MAX_COUNT, SamplingParams


@pytest.fixture(scope="module")
def openapi():
    from nanovllm_api.app import build_app
    from nanovllm_api.config import ServerConfig

    return build_app(ServerConfig()).openapi()  # built, never started: no model is loaded


def request_schemas(openapi) -> dict[str, dict]:
    """Every component schema that some request body reaches."""
    components = openapi["components"]["schemas"]
    reached: dict[str, dict] = {}

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref:
                name = ref.rsplit("/", 1)[1]
                if name not in reached:
                    reached[name] = components[name]
                    walk(components[name])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in openapi["paths"].values():
        for operation in path.values():
            walk(operation.get("requestBody", {}))
    return reached


def numeric_leaves(node, where: str):
    """(where, schema) for every integer or number schema under ``node``."""
    if isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            yield where, node
        for key, value in node.items():
            yield from numeric_leaves(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from numeric_leaves(value, f"{where}[{index}]")


def test_every_number_in_every_request_body_has_a_published_range(openapi):
    schemas = request_schemas(openapi)
    assert {"ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "ResponsesRequest",
            "TokenizeRequest", "DetokenizeRequest"} <= set(schemas)
    leaves = [leaf for name, schema in schemas.items() for leaf in numeric_leaves(schema, name)]
    assert len(leaves) > 20
    unbounded = []
    for where, schema in leaves:
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        # (pydantic writes the bounds as JSON floats: int64's limits round to +-2^63)
        if low is None or high is None or not (float(INT64_MIN) <= low and high <= float(INT64_MAX)):
            unbounded.append(where)
    assert not unbounded, f"numbers without a range the engine holds: {unbounded}"


def test_logit_bias_keys_are_ascii_digits_in_the_schema(openapi):
    bias = openapi["components"]["schemas"]["CompletionRequest"]["properties"]["logit_bias"]
    patterns = next(option["patternProperties"] for option in bias["anyOf"] if "patternProperties" in option)
    assert list(patterns) == ["^[0-9]{1,10}$"]


@pytest.mark.parametrize("field,value", [
    ("top_k", 2**63), ("top_k", MAX_COUNT + 1), ("max_tokens", 2**63), ("min_tokens", 2**40),
    ("stop_token_ids", [2**63]), ("temperature", math.nan), ("temperature", math.inf), ("top_p", math.nan),
    ("presence_penalty", math.nan), ("repetition_penalty", math.inf),
])
def test_the_engine_refuses_what_its_tensors_cannot_hold(field, value):
    with pytest.raises(InvalidRequestError) as refused:
        SamplingParams(**{field: value})
    assert refused.value.param == field


def test_a_temperature_below_epsilon_is_greedy():
    assert SamplingParams(temperature=1e-40).greedy
    assert SamplingParams(temperature=1e-6).greedy
    assert not SamplingParams(temperature=1e-4).greedy


def test_token_ids_of_a_request_are_checked_against_the_vocabulary():
    info = ModelInfo(max_model_len=64, vocab_size=100)
    for field, value in (("stop_token_ids", [100]), ("logit_bias", {100: 1.0})):
        with pytest.raises(InvalidRequestError) as refused:
            info.check_request([1, 2], SamplingParams(**{field: value}))
        assert refused.value.param == field
    info.check_request([1, 2], SamplingParams(stop_token_ids=[99], logit_bias={0: 1.0}))
