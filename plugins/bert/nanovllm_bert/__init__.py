"""nanovllm plugin: the BERT encoder, for embeddings."""

from nanovllm_core.hookspecs import hookimpl


@hookimpl
def register_model_architectures(register):
    register("BertModel", "nanovllm_bert.encoder:BertModel")
