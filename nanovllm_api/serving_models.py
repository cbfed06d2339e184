"""GET /v1/models and /v1/models/{id}"""

from __future__ import annotations

from nanovllm_api.protocol.common import now
from nanovllm_api.protocol.models import ModelCard, ModelList
from nanovllm_api.serving_context import ServingContext
from nanovllm_core.engine_client import EngineUnavailable


def _card(ctx: ServingContext, name: str) -> ModelCard:
    try:
        info = ctx.engine.model_info
    except EngineUnavailable:  # still loading: the list answers without what the model says
        info = None
    return ModelCard(id=name, created=now(), root=str(ctx.config.model or name),
                     max_model_len=info.max_model_len if info else None,
                     sampling_defaults=info.sampling_defaults if info else None)


def list_models(ctx: ServingContext) -> ModelList:
    return ModelList(data=[_card(ctx, name) for name in ctx.model_names])


def retrieve_model(ctx: ServingContext, model_id: str) -> ModelCard:
    return _card(ctx, ctx.check_model(model_id))
