"""The hook specifications every nanovllm plugin implements.

A plugin is a plain module (or object) with functions decorated by ``@hookimpl``
and registered under the ``nanovllm`` entry-point group of its distribution::

    [project.entry-points.nanovllm]
    myplugin = "my_package.plugin"

Every hook here is a *register-callback* hook: nanovllm calls it with a
``register(name, target)`` function, and the plugin calls ``register`` once per
implementation it provides. ``target`` is either the object itself or a lazy
``"module:attribute"`` string, which nanovllm imports only when that name is
chosen, so installing many plugins costs nothing at start-up.
"""

import pluggy

PROJECT_NAME = "nanovllm"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_model_architectures(register):
    """Register model classes, keyed by Hugging Face architecture name.

    ``register("Qwen3ForCausalLM", "my_pkg.qwen3:Qwen3ForCausalLM")``. The name
    is matched against ``architectures`` in a checkpoint's ``config.json`` (for a
    GGUF file, the architecture transformers derives from its metadata).

    The class is built as ``cls(hf_config)`` under the engine's dtype and device
    and must provide:

    - ``forward(input_ids, positions) -> hidden_states`` over a flat batch of
      tokens (``[num_tokens]`` each), using ``nanovllm_core.layers.Attention``
      for attention so that the paged KV cache and backends work;
    - ``compute_logits(hidden_states) -> logits`` (``[n, vocab]``), for a model
      that generates. A model without it is an embedding model: it serves
      ``/v1/embeddings`` only. An encoder (BERT) builds its ``Attention``
      layers with ``causal=False``: they attend within each sequence and keep
      no KV cache;
    - optionally ``default_pooler``: the registered pooler its embeddings use
      when the checkpoint's sentence-transformers files do not say
      (``"last"`` if absent);
    - either ``packed_modules_mapping`` (checkpoint name fragment ->
      ``(fused parameter fragment, shard id)``), used by the generic loader, or
      its own ``load_weights(weights)`` taking ``(name, tensor)`` pairs;
    - optionally, for GGUF files whose llama.cpp converter departs from its
      Llama conventions: ``gguf_tensor_names`` (extra ``"blk.N.x.weight" ->
      "model.layers.N.y.weight"`` entries) and ``from_gguf(name, tensor)``
      (the tensor as the Hugging Face checkpoint holds it);
    - optionally ``default_chat_template`` (a registered template's name, for
      checkpoints that carry none) and ``stop_tokens`` (token strings that end
      generation as EOS does, e.g. the chat format's end of turn).

    Local attention layers pass ``sliding_window=W`` to ``Attention``. The Llama family
    needs no model code of its own: subclass ``nanovllm_core.layers.LlamaStyleForCausalLM``
    and set its ``DecoderSettings``. ``nanovllm_core.model_class`` lists these members
    (``OPTIONAL_MEMBERS``) and is where the core reads them; a class member whose name is
    a near miss of one is refused when the model loads.
    """


@hookspec
def register_attention_backends(register):
    """Register attention backends, keyed by the name users pass to
    ``--attention-backend``.

    The target is a subclass of ``nanovllm_core.attention.AttentionBackend``:
    it declares the devices it runs on, the KV-cache layout it wants, and
    computes attention for a flat batch of prefill chunks and decodes over the
    paged KV cache, described by ``AttentionMetadata``. A backend that honours
    a layer's sliding window (the ``sliding_window`` keyword of ``forward``)
    sets ``supports_sliding_window = True``; models with windowed layers refuse
    the others.
    """


@hookspec
def register_chat_templates(register):
    """Register chat templates by name, for ``--chat-template NAME``.

    The target is a Jinja2 template string (taken as it is, never as a lazy
    import path) in the Hugging Face chat-template dialect (it receives ``messages``, ``add_generation_prompt`` and the
    tokenizer's special tokens). By default a model's own template is used;
    a registered name overrides it.
    """


@hookspec
def register_samplers(register):
    """Register samplers, keyed by the name passed as the ``sampler`` setting.

    The target is a class built with no arguments and called as
    ``sampler(logits, batch) -> SamplerOutput``, where ``logits`` is
    ``[num_seqs, vocab]`` float32 and ``batch`` is a
    ``nanovllm_core.sampling.SamplingBatch`` of per-row tensors. It must be
    vectorised over the batch.
    """


@hookspec
def register_grammar_backends(register):
    """Register structured-output backends, keyed by the name passed as the
    ``grammar_backend`` setting.

    The target is a ``nanovllm_core.grammar.GrammarBackend`` subclass, built
    as ``cls(tokenizer, vocab_size)`` on the first constrained request. It
    compiles a request's ``GuidedDecoding`` (a JSON schema, any JSON object, an
    EBNF grammar, a regex or a structural tag) and makes one ``GrammarMatcher`` per sequence; the
    runner asks the matchers for token masks before each sampling step.
    """


@hookspec
def register_tool_call_parsers(register):
    """Register tool-call parsers, keyed by the name passed as ``--tool-call-parser``.

    The target is a ``nanovllm_core.tool_calls.ToolCallParser`` subclass, built
    with no arguments. It knows how one model family writes tool calls: it
    finds them in generated text (whole, and delta by delta for streaming),
    writes the structural tag that constrains decoding to valid calls, and
    carries tools and earlier calls into the prompt for chat templates that do
    not render them. ``nanovllm_core.tool_calls.TaggedJsonToolCallParser``
    already parses JSON calls inside tags.
    """


@hookspec
def register_reasoning_parsers(register):
    """Register reasoning parsers, keyed by the name passed as ``--reasoning-parser``.

    The target is a ``nanovllm_core.reasoning.ReasoningParser`` subclass, built
    with no arguments: its tags mark where a model family's thinking starts
    and ends, and its ``stream(prompt)`` splits an output into reasoning and
    answer as it arrives. The server sends the reasoning as
    ``reasoning_content``, finds tool calls in the answer only, and starts
    ``response_format``/tool constraints after the end tag.
    """


@hookspec
def register_poolers(register):
    """Register poolers, keyed by the name passed as the ``pooler`` setting.

    The target is a ``nanovllm_core.pooling.Pooler`` subclass, built with no
    arguments, whose ``pool(hidden_states)`` turns the final hidden states of
    one sequence's tokens (``[num_tokens, hidden]``) into its embedding
    (``[hidden]``). Normalisation and ``dimensions`` are applied after it.
    By default a model pools as its sentence-transformers ``modules.json``
    says (``1_Pooling/config.json``), else as the model class prefers.
    """
