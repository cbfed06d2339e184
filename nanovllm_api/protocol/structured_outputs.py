"""Structured-output policy, in one place: the request fields that ask for a constraint
(response_format, vLLM's structured_outputs and guided_* fields, a chat's tools), the one
rule that a request has one constraint at most, and their translation to ``GuidedDecoding``.
Each schema is checked once, where it compiles (``nanovllm_core.grammar.schema_check``)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.grammar import GuidedDecoding


# every tool's schema is compiled into the request's grammar
MAX_TOOLS = 128

# guided_choice becomes a grammar of this many alternatives at most
MAX_GUIDED_CHOICES = 1024

MAX_GUIDED_CHOICE_CHARS = 4096

MAX_GUIDED_SPEC_CHARS = 65536  # a regular expression or grammar

GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")  # vLLM's older fields

GuidedSpec = Annotated[str, Field(max_length=MAX_GUIDED_SPEC_CHARS)]

GuidedChoices = Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_GUIDED_CHOICE_CHARS)]],
                          Field(min_length=1, max_length=MAX_GUIDED_CHOICES)]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # the output always follows the schema, strict or not


class TagStructure(BaseModel):
    """vLLM's older structural tag: text between ``begin`` and ``end`` follows ``schema``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    begin: Annotated[str, Field(min_length=1, max_length=MAX_GUIDED_CHOICE_CHARS)]
    json_schema: dict[str, Any] = Field(alias="schema")
    end: Annotated[str, Field(max_length=MAX_GUIDED_CHOICE_CHARS)]


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None
    # structural_tag: xgrammar's format object (vLLM's newer form), or structures and triggers (its older one)
    format: dict[str, Any] | None = None
    structures: Annotated[list[TagStructure], Field(min_length=1, max_length=MAX_TOOLS)] | None = None
    triggers: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_GUIDED_CHOICE_CHARS)]],
                        Field(min_length=1, max_length=MAX_TOOLS)] | None = None

    def to_guided_decoding(self) -> GuidedDecoding | None:
        """The grammar this format asks for; a schema that is not one is a 400."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return GuidedDecoding("json_object", param="response_format")
        if self.type == "structural_tag":
            return self._structural_tag()
        if self.json_schema is None:
            raise InvalidRequestError("response_format of type 'json_schema' needs a 'json_schema' object",
                                      param="response_format")
        return GuidedDecoding.from_json("json_schema", self.json_schema.json_schema, "response_format")

    def _structural_tag(self) -> GuidedDecoding:
        """Either form as xgrammar's structural tag: the older one is tags that may
        start wherever the text reaches a trigger, as vLLM reads it."""
        if (self.format is None) == (self.structures is None):
            raise InvalidRequestError("a structural_tag response_format needs either 'format' or 'structures' "
                                      "and 'triggers'", param="response_format")
        if self.format is not None:
            tag = {"type": "structural_tag", "format": self.format}
            return GuidedDecoding.from_json("structural_tag", tag, "response_format")
        if self.triggers is None:
            raise InvalidRequestError("'structures' needs 'triggers'", param="response_format")
        tags = [{"type": "tag", "begin": structure.begin, "end": structure.end,
                 "content": {"type": "json_schema", "json_schema": structure.json_schema}}
                for structure in self.structures]
        tag_format = {"type": "triggered_tags", "triggers": self.triggers, "tags": tags}
        tag = {"type": "structural_tag", "format": tag_format}
        return GuidedDecoding.from_json("structural_tag", tag, "response_format")


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs`` object: one constraint, named by its kind."""

    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: GuidedSpec | None = None
    choice: GuidedChoices | None = None
    grammar: GuidedSpec | None = None

    def to_guided_decoding(self, param: str = "structured_outputs") -> GuidedDecoding:
        kind, value = single_constraint(
            {"json": self.json_, "regex": self.regex, "choice": self.choice, "grammar": self.grammar}, param,
            required=True)
        if kind == "json":  # JSON text as it came (schema_check parses it where it compiles), or an object
            if isinstance(value, str):
                return GuidedDecoding("json_schema", value, param=param)
            return GuidedDecoding.from_json("json_schema", value, param)
        if kind == "choice":  # one alternative per choice, each a literal string
            choices = " | ".join(json.dumps(c, ensure_ascii=False) for c in value)
            return GuidedDecoding("ebnf", "root ::= " + choices, param=param)
        return GuidedDecoding("regex" if kind == "regex" else "ebnf", value, param=param)


def single_constraint(given: dict[str, Any], param: str | None = None,
                      required: bool = False) -> tuple[str, Any] | None:
    """The rule: at most one constraint (exactly one if ``required``). ``given``: each field
    that may carry one, None where the request leaves it out. The 400 names the fields given;
    its param is ``param``, else the second field given."""
    present = {name: value for name, value in given.items() if value is not None}
    if len(present) > 1 or (required and not present):
        raise InvalidRequestError(f"give one constraint of {', '.join(given)}; got {' and '.join(present) or 'none'}",
                                  param=param or list(present)[1])
    return next(iter(present.items()), None)


def request_constraint(request: Any, tools: GuidedDecoding | None) -> GuidedDecoding | None:
    """The one constraint a chat or completion request asks for: ``tools`` (its tools'
    grammar), response_format, structured_outputs or a guided_* field."""
    response_format = request.response_format
    given = {"tools": tools,
             "response_format": response_format if response_format is not None and response_format.type != "text"
             else None,
             "structured_outputs": request.structured_outputs,
             **{name: getattr(request, name) for name in GUIDED_FIELDS}}
    chosen = single_constraint(given)
    if chosen is None:
        return None
    kind, value = chosen
    if kind == "tools":
        return value
    if kind in ("response_format", "structured_outputs"):
        return value.to_guided_decoding()
    return StructuredOutputs(**{kind.removeprefix("guided_"): value}).to_guided_decoding(param=kind)
