"""Server-sent events: a streamed response's framing, and its errors once it has begun."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from pydantic import BaseModel

from nanovllm_api.errors import APIError, InternalError, sse_error

logger = logging.getLogger(__name__)
SSE_DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"


async def event_stream(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Frame a stream's events; an error after the stream began goes out as a
    ``data:`` line with OpenAI's error body, then ``[DONE]``."""
    try:
        async for event in events:
            yield event
    except APIError as error:
        yield sse_error(error)
    except Exception:
        logger.exception("error while streaming")
        yield sse_error(InternalError("The server had an error while streaming."))
    yield SSE_DONE
