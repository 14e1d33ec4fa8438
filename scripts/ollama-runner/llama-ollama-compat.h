// granite-gguf's declarations of the hook points that ollama's llama/compat layer adds to llama.cpp's model
// loader (ollama commit fb30760: llama/compat/001-llama-cpp-hooks.patch calls these from
// src/llama-model-loader.cpp). Same names and signatures, so compat-hooks.patch places the calls where
// ollama's patch does; granite-ollama-compat.cpp is this project's own pass-through implementation.
#pragma once

#include <cstddef>
#include <string>

struct gguf_context;
struct ggml_context;
struct ggml_tensor;
struct llama_model_loader;

namespace llama_ollama_compat {

// After the architecture is read; true would make the loader disable mmap.
bool translate_metadata(const llama_model_loader * ml, gguf_context * meta, ggml_context * ctx,
                        std::string & arch_name, const char * fname);

// While the weights index is built; true would hide the tensor from the loader.
bool should_skip_tensor(const llama_model_loader * ml, const char * tensor_name);

// Before a tensor's bytes are read; true would mean the tensor was loaded by the compat layer.
bool maybe_load_text_tensor(const llama_model_loader * ml, ggml_tensor * cur, size_t file_offset);

}  // namespace llama_ollama_compat
