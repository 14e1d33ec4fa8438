"""GGUF keys gguf-py has no constant for: the project's own namespace, and two llama.cpp reads.

Every other key comes from gguf-py's `gguf.Keys`; the architecture name from `gguf.MODEL_ARCH_NAMES`.
"""

MATRYOSHKA_DIMS = "granite_gguf.matryoshka_dims"  # array of uint32, largest first; absent when none
NORMALIZE = "granite_gguf.normalize"  # bool: the sentence-transformers pipeline ends with Normalize
TOKENIZER_FAMILY = "granite_gguf.tokenizer_family"  # TokenizerFamily name
CONVERTER_VERSION = "granite_gguf.converter_version"
CERTIFICATE_PREFIX = "granite_gguf.certificate."  # one key per field of granite_gguf.certificate.Certificate
DROPPED_MERGES = "granite_gguf.dropped_merges"  # uint32: tokenizer.json merges left out because they can never apply

# llama.cpp reads these (src/llama-arch.cpp LLM_KV_HIDDEN_ACT, LLM_KV_TOKENIZER_CLS_ID); gguf-py 0.19 has no constants.
HIDDEN_ACTIVATION = "{arch}.hidden_activation"
CLS_ID = "tokenizer.ggml.cls_token_id"
