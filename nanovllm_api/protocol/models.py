"""/v1/models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "nanovllm"
    root: str | None = None
    max_model_len: int | None = None
    # an extension: what a request that leaves a sampling field out gets from the model (None: loading)
    sampling_defaults: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
