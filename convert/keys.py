"""GGUF keys of the project's own namespace (llama.cpp's keys come from gguf-py's `gguf.Keys`)."""

ARCH = "modern-bert"
MATRYOSHKA_DIMS = "granite_gguf.matryoshka_dims"  # array of uint32, largest first; absent when none
NORMALIZE = "granite_gguf.normalize"  # bool: the sentence-transformers pipeline ends with Normalize
TOKENIZER_FAMILY = "granite_gguf.tokenizer_family"  # TokenizerFamily name
CONVERTER_VERSION = "granite_gguf.converter_version"
CERTIFICATE_PREFIX = "granite_gguf.certificate."  # one key per field of granite_gguf.certificate.Certificate
DROPPED_MERGES = "granite_gguf.dropped_merges"  # uint32: tokenizer.json merges left out because they can never apply

# llama.cpp reads this key (src/llama-arch.cpp LLM_KV_HIDDEN_ACT) but gguf-py 0.19 has no constant for it.
HIDDEN_ACTIVATION = "{arch}.hidden_activation"
