"""Hypothesis strategies for request bodies that know the request models' bounds: built
from the server's own OpenAPI schema (the pydantic request models), each field gets the
extreme values of its type and the edges of its published range (the bound, one past it),
on top of a minimal valid body per endpoint.

Extremes, as an outside audit tries them: integers of 2^63, -2^63-1 and 2^64; floats of
1e308, 1e-320 (subnormal) and 1e-40; NaN and Infinity as strings (JSON has no such
numbers; the raw literals are test_bad_input's); non-ASCII digits; nesting 400 deep;
arrays of up to 20,000 entries (within 1 MiB: the body limit is 4 MiB)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

HI = [{"role": "user", "content": "hi"}]
# the smallest valid body of each endpoint; the fuzzer adds or replaces fields on it
BASE_BODIES = {
    "/v1/chat/completions": ("ChatCompletionRequest", {"messages": HI, "max_tokens": 2}),
    "/v1/completions": ("CompletionRequest", {"prompt": "x", "max_tokens": 2}),
    "/v1/responses": ("ResponsesRequest", {"input": "hi", "max_output_tokens": 2}),
    "/v1/embeddings": ("EmbeddingRequest", {"input": "x"}),
    "/tokenize": ("TokenizeRequest", {"prompt": "x"}),
    "/detokenize": ("DetokenizeRequest", {"tokens": [1]}),
}
EXTREME_INTS = [2**63, -(2**63) - 1, 2**64, 2**63 - 1, 2**31, -1, 0, 1, 10**30]
EXTREME_FLOATS = [1e308, -1e308, 1e-320, 5e-324, 1e-40, -0.0, 0.0, 0.5, 2.0000001]
NON_FINITE = ["NaN", "Infinity", "-Infinity", "nan"]
EXTREME_STRINGS = ["", "\u00b2", "\u0661\u0662\u0663", "--5", "9" * 5000, "\u0000", "x" * 50_000, "{" * 2000,
                   "\ud7ff\ue000", "1e5"]
HUGE_ARRAY = 20_000
HUGE_ARRAY_BYTES = 1 << 20  # a huge array stays within the server's 4 MiB body limit (413s are test_bad_input's)
DEEP = 400
MAX_OBJECT_DEPTH = 3  # how far into nested models the fuzzer descends


def deep_object(depth: int) -> dict:
    node: dict = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"a": node}}
    return node


ANY_VALUES = [None, True, 0, 2**63, 1e308, "NaN", "\u00b2", [], {}, deep_object(DEEP), [[[[[]]]]] * 100,
              {str(i): i for i in range(1000)}, {"\u00b2": 1, "-1": 2}]


class BoundsFuzzer:
    """Strategies from one OpenAPI document's component schemas."""

    def __init__(self, openapi: dict):
        self.components = openapi["components"]["schemas"]

    def body(self, path: str) -> st.SearchStrategy[bytes]:
        """The endpoint's base body with one or two fields set to extremes (few enough that
        many cases pass validation and reach the engine with edge values), as JSON: hypothesis
        prints a failing case, and its printer recurses through nesting that JSON text has not."""
        name, base = BASE_BODIES[path]
        properties = self.components[name]["properties"]
        chosen = st.lists(st.sampled_from(sorted(properties)), min_size=1, max_size=2, unique=True)
        fields = chosen.flatmap(lambda names: st.fixed_dictionaries(
            {field: self.value(properties[field], 0) for field in names}))
        return fields.map(lambda extra: json.dumps({**base, **extra}).encode())

    def value(self, schema: dict, depth: int) -> st.SearchStrategy[Any]:
        if "$ref" in schema:
            return self.value(self.components[schema["$ref"].rsplit("/", 1)[1]], depth)
        options = schema.get("anyOf") or schema.get("oneOf")
        if options:
            return st.one_of([self.value(option, depth) for option in options])
        if "enum" in schema:
            return st.sampled_from(schema["enum"] + ["\u00b2", 0])
        if "const" in schema:
            return st.sampled_from([schema["const"], "\u00b2"])
        kind = schema.get("type")
        if kind == "integer":
            return st.sampled_from(EXTREME_INTS + edges(schema, 1))
        if kind == "number":
            return st.sampled_from(EXTREME_FLOATS + NON_FINITE + edges(schema, 1e-9))
        if kind == "string":
            return st.sampled_from(EXTREME_STRINGS)
        if kind == "boolean":
            return st.sampled_from([True, False, "true", 1])
        if kind == "null":
            return st.none()
        if kind == "array":
            item = self.value(schema.get("items", {}), depth)
            return st.one_of(st.lists(item, max_size=3), item.map(huge_array))
        if kind == "object" and "properties" in schema and depth < MAX_OBJECT_DEPTH:
            required = {name: self.value(schema["properties"][name], depth + 1) for name in schema.get("required", [])}
            optional = {name: self.value(sub, depth + 1) for name, sub in schema["properties"].items()
                        if name not in required}
            return st.fixed_dictionaries(required, optional=optional)
        return st.sampled_from(ANY_VALUES)  # an object of any shape (a schema, kwargs), or anything


def huge_array(item: Any) -> list:
    """``item`` repeated HUGE_ARRAY times, or as often as HUGE_ARRAY_BYTES of JSON hold."""
    return [item] * max(1, min(HUGE_ARRAY, HUGE_ARRAY_BYTES // len(json.dumps(item))))


def edges(schema: dict, step: float) -> list:
    """A range's bounds and one step past each."""
    values = []
    for key, outward in (("minimum", -step), ("exclusiveMinimum", 0), ("maximum", step), ("exclusiveMaximum", 0)):
        if key in schema:
            bound = schema[key]
            bound = int(bound) if step == 1 and float(bound).is_integer() and abs(bound) < 2**62 else bound
            values += [bound, bound + outward] if outward else [bound]
    return values
