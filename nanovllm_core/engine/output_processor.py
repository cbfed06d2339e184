"""After each step: every sampled token goes through its request's grammar, stop tokens,
detokenizer, length limits and stop strings, and comes out as a ``RequestOutput``."""

from __future__ import annotations

import logging

from nanovllm_core.detokenizer import IncrementalDetokenizer, StopStringMatcher
from nanovllm_core.engine import structured_output
from nanovllm_core.engine.scheduler import ScheduledBatch
from nanovllm_core.engine.sequence import Sequence
from nanovllm_core.outputs import RequestOutput, SampledToken

logger = logging.getLogger(__name__)


class RowFailed:
    """In place of a sampled token: this sequence's step raised when run on its own."""


class RequestState:
    """A sequence and the text made from it so far (none for an embedding request)."""

    def __init__(self, seq: Sequence, detokenizer: IncrementalDetokenizer | None):
        self.seq = seq
        self.detokenizer = detokenizer
        if not seq.is_pooling:
            self.stops = StopStringMatcher(seq.params.stop, seq.params.include_stop_str_in_output)
            self.stop_token_ids = frozenset(seq.params.stop_token_ids)
        self.pieces: list[str] = []  # the emitted text, joined once at the end


class OutputProcessor:
    """The state of every unfinished request: what it has emitted and how it stops."""

    def __init__(self, tokenizer, eos_token_ids: frozenset[int], max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.requests: dict[str, RequestState] = {}

    def add(self, seq: Sequence) -> None:
        detokenizer = None
        if not seq.is_pooling and self.tokenizer is not None:
            detokenizer = IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids, seq.params.skip_special_tokens)
        self.requests[seq.request_id] = RequestState(seq, detokenizer)

    def abort(self, request_id: str) -> bool:
        return self.requests.pop(request_id, None) is not None

    def process(self, batch: ScheduledBatch, results: list) -> list[RequestOutput]:
        """One output for each sequence of the batch that has a result (None: a prompt still
        being prefilled in chunks), in batch order; finished sequences are forgotten."""
        return [self._process(seq, result) for seq, result in zip(batch.seqs, results) if result is not None]

    def _process(self, seq: Sequence, result: SampledToken | object) -> RequestOutput:
        if isinstance(result, RowFailed):  # logged where it failed
            return self._fail(seq)
        try:
            return self._finish_embedding(seq, result) if seq.is_pooling else self._append(seq, result)
        except Exception:  # detokenizing, the grammar, stops: this request's own, as a step's would be
            logger.exception("request %s failed after its step; the others go on", seq.request_id)
            return self._fail(seq)

    def _fail(self, seq: Sequence) -> RequestOutput:
        seq.finish("error")
        self.requests.pop(seq.request_id, None)
        return RequestOutput.failed(seq.request_id, seq.num_prompt_tokens,
                                    "The engine failed on this request; the others were not affected.")

    def _finish_embedding(self, seq: Sequence, embedding: object) -> RequestOutput:
        seq.finish("stop")
        del self.requests[seq.request_id]
        return RequestOutput(
            request_id=seq.request_id, new_token_ids=[], new_text="", output_token_ids=[], text="", finished=True,
            finish_reason="stop", stop_reason=None, num_prompt_tokens=seq.num_prompt_tokens, num_cached_tokens=0,
            embedding=embedding,
        )

    def _append(self, seq: Sequence, sampled: SampledToken) -> RequestOutput:
        """Append a sampled token, detokenize it, and finish the sequence if it stops."""
        state = self.requests[seq.request_id]
        token = sampled.token_id
        seq.append_token(token)
        structured_output.advance(seq, token)
        stop_token = token in state.stop_token_ids
        ends_on_token = stop_token or (token in self.eos_token_ids and not seq.params.ignore_eos)
        detokenizer = state.detokenizer
        delta = "" if ends_on_token or detokenizer is None else detokenizer.add([token])
        if ends_on_token:
            seq.finish("stop", token if stop_token else None)
        elif seq.num_output_tokens >= seq.params.max_tokens or len(seq) >= self.max_model_len:
            seq.finish("length")
        elif structured_output.terminated(seq):
            seq.finish("stop")
        if seq.is_finished and detokenizer is not None:
            delta += detokenizer.flush()
        emitted, stop_string = state.stops.add(delta)
        if stop_string is not None:
            seq.finish("stop", stop_string)
        elif seq.is_finished:
            emitted += state.stops.finish()
        state.pieces.append(emitted)
        if seq.is_finished:
            del self.requests[seq.request_id]
        return _output(seq, state, sampled, emitted)


def _output(seq: Sequence, state: RequestState, sampled: SampledToken, emitted: str) -> RequestOutput:
    params, finished = seq.params, seq.is_finished
    return RequestOutput(
        request_id=seq.request_id,
        new_token_ids=[sampled.token_id],
        new_text=emitted,
        output_token_ids=seq.output_token_ids if finished else [],
        text="".join(state.pieces) if finished else "",
        finished=finished,
        finish_reason=seq.finish_reason,
        stop_reason=seq.stop_reason,
        num_prompt_tokens=seq.num_prompt_tokens,
        num_cached_tokens=seq.num_cached_tokens,
        new_logprobs=[sampled] if params.logprobs is not None else [],
        prompt_logprobs=seq.prompt_logprobs if params.prompt_logprobs is not None and seq.num_output_tokens == 1
        else None,
    )
