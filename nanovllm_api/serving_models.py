"""GET /v1/models and /v1/models/{id}"""

from __future__ import annotations

from nanovllm_api.protocol.common import now
from nanovllm_api.protocol.models import ModelCard, ModelList
from nanovllm_api.serving_context import ServingContext
from nanovllm_core.engine_client import EngineUnavailable


def _card(ctx: ServingContext, name: str) -> ModelCard:
    try:
        max_model_len = ctx.engine.model_info.max_model_len
    except EngineUnavailable:  # still loading: the list answers without it
        max_model_len = None
    return ModelCard(id=name, created=now(), root=str(ctx.config.model or name), max_model_len=max_model_len)


def list_models(ctx: ServingContext) -> ModelList:
    return ModelList(data=[_card(ctx, name) for name in ctx.model_names])


def retrieve_model(ctx: ServingContext, model_id: str) -> ModelCard:
    return _card(ctx, ctx.check_model(model_id))
