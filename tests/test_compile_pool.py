"""The grammar compile pool on its own: worker processes that check and compile, are killed
past the timeout and replaced, and a cache of this process that outlives them."""

import asyncio
import json

import psutil
import pytest

from nanovllm_core.engine_client import GrammarCompileTimeout
from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.grammar import GuidedDecoding
from nanovllm_core.grammar.compile_pool import GrammarCompilePool
from nanovllm_core.grammar.xgrammar_backend import XGrammarBackend

VOCAB = 49152
SCHEMA = GuidedDecoding("json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}}))
SLOW = GuidedDecoding("json_schema", json.dumps({"type": "string", "pattern": "(([a-z]{1,50} ){1,50}){1,2}"}))


def test_compile_refuse_time_out_replace_and_keep_the_cache(smollm2_tokenizer):
    backend = XGrammarBackend(smollm2_tokenizer, VOCAB)
    pool = GrammarCompilePool(backend, "xgrammar", smollm2_tokenizer, VOCAB, workers=1, timeout=1.0)

    async def run():
        compiled = await pool.compile(SCHEMA)
        matcher = backend.matcher(compiled)
        assert all(matcher.accept(t) for t in smollm2_tokenizer.encode('{"a":', add_special_tokens=False))
        with pytest.raises(InvalidRequestError) as refused:
            await pool.compile(GuidedDecoding("json_schema", json.dumps({"type": "nope"}), param="guided_json"))
        assert refused.value.param == "guided_json" and "not a valid JSON schema" in str(refused.value)
        [first] = list(pool._workers)
        with pytest.raises(GrammarCompileTimeout):
            await pool.compile(SLOW)
        assert not psutil.pid_exists(first.process.pid)  # killed, not left compiling
        assert await pool.compile(SCHEMA) is compiled  # from the cache, whatever became of the worker
        fresh = await pool.compile(GuidedDecoding("json_object"))  # the replacement worker compiles
        assert fresh is not None and [w.process.pid for w in pool._workers] != [first.process.pid]

    try:
        asyncio.run(run())
    finally:
        pool.close()
