"""Where each sequence's outputs go on the event loop, for every engine client wherever its
engine runs: ``StreamSinks`` routes them to the ``AsyncStream`` of their request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nanovllm_core.engine.messages import sequence_ids
from nanovllm_core.engine_client import ReaderStalled
from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.outputs import RequestOutput

# outputs one request may have waiting for its reader; past this it is not reading
MAX_PENDING_OUTPUTS = 4096


def check_admissible(num_sequences: int, max_sequences: int, holder: str, param: str) -> None:
    """InvalidRequestError for a request that needs more sequences than ``holder`` ever holds
    at once (retrying cannot help, unlike QueueFull); ``param``: what it would change."""
    if num_sequences > max_sequences:
        raise InvalidRequestError(
            f"The request needs {num_sequences} sequences (prompts x n, or inputs) but {holder} holds at most "
            f"{max_sequences} at once (max_num_seqs + max_queued_sequences).", param=param)


class StreamSinks:
    """The open streams, by sequence id. ``abort(stream, sequence ids)`` tells the engine to
    drop the unfinished sequences of a stream that was closed."""

    def __init__(self, reader_timeout: float, abort: Callable[[AsyncStream, set[str]], None]):
        self.reader_timeout = reader_timeout
        self.abort = abort
        self.num_sequences = 0  # admitted and not finished
        self._sinks: dict[str, tuple[AsyncStream, int]] = {}
        self._streams: dict[str, AsyncStream] = {}  # by request id

    def open(self, request_id: str, num_sequences: int) -> AsyncStream:
        stream = AsyncStream(self, request_id, sequence_ids(request_id, num_sequences))
        for index, sequence_id in enumerate(stream.ids):
            self._sinks[sequence_id] = (stream, index)
        self._streams[request_id] = stream
        self.num_sequences += num_sequences
        return stream

    def deliver(self, outputs: list[RequestOutput], now: float) -> None:
        for output in outputs:
            sink = self._sinks.get(output.request_id)
            if sink is None:
                continue
            stream, index = sink
            stream.queue.put_nowait((index, output))
            if stream.reader_stalled(now, self.reader_timeout):
                stream.fail(ReaderStalled(f"the client did not read for {self.reader_timeout:g} s"))

    def fail(self, sequence_id: str, error: BaseException) -> None:
        sink = self._sinks.get(sequence_id)
        if sink is not None:
            sink[0].queue.put_nowait((sink[1], error))

    def fail_request(self, request_id: str, error: BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.queue.put_nowait((0, error))

    def fail_all(self, error: BaseException) -> None:
        for sequence_id in list(self._sinks):
            self.fail(sequence_id, error)

    def release(self, stream: AsyncStream) -> None:
        self.num_sequences -= len(stream.ids)
        for sequence_id in stream.ids:
            self._sinks.pop(sequence_id, None)
        self._streams.pop(stream.request_id, None)
        if stream.unfinished:
            self.abort(stream, stream.unfinished)


class AsyncStream:
    """A ``GenerationStream``: (sequence index, output) pairs from an asyncio queue."""

    def __init__(self, sinks: StreamSinks, request_id: str, ids: list[str]):
        self.sinks = sinks
        self.request_id = request_id
        self.ids = ids
        self.queue: asyncio.Queue = asyncio.Queue()
        self.unfinished = set(ids)
        self.closed = False
        self.reading = False  # the reader waits on the queue now
        self.last_read = asyncio.get_running_loop().time()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> tuple[int, RequestOutput]:
        if not self.unfinished:
            self.close()
            raise StopAsyncIteration
        self.reading = True
        try:
            index, item = await self.queue.get()
        finally:
            self.reading, self.last_read = False, asyncio.get_running_loop().time()
        if isinstance(item, BaseException):
            self.close()
            raise item
        if item.finished:
            self.unfinished.discard(item.request_id)
        return index, item

    def reader_stalled(self, now: float, timeout: float) -> bool:
        """Outputs wait while the reader is elsewhere (blocked sending to a client that
        does not read) for longer than ``timeout``, or pile up past the bound."""
        if self.reading or self.closed:
            return False
        return self.queue.qsize() > MAX_PENDING_OUTPUTS or now - self.last_read > timeout

    def fail(self, error: BaseException) -> None:
        """Abort now and drop what waits; the reader, if it comes back, gets ``error``."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait((0, error))
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sinks.release(self)

    def __del__(self) -> None:
        self.close()
