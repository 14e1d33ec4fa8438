// granite-gguf's stand-in for ollama's in-memory GGUF translation layer (llama/compat/llama-ollama-compat.cpp at
// ollama fb30760), built into the llama-server that scripts/build-ollama-runner.sh makes.
//
// ollama's layer only acts on files whose general.architecture has a handler (its translate_metadata dispatch:
// the names in kTranslated below); for any other file every hook returns false and the file loads unchanged.
// modern-bert has no handler, so for this project's files ollama's runner and this one load the same bytes the
// same way. A file of a translated architecture is refused here instead of being loaded untranslated.
#include "llama-ollama-compat.h"

#include <cstdio>
#include <stdexcept>

namespace llama_ollama_compat {

namespace {
const char * const kTranslated[] = {
    "gemma3", "bert", "gemma3n", "gemma4", "qwen35moe", "qwen35", "qwen3next", "laguna", "gptoss", "lfm2", "olmo3",
    "mistral3", "qwen25vl", "qwen3vl", "qwen3vlmoe", "glm4moelite", "deepseekocr", "nemotron_h_omni",
    "nemotron_h_moe", "llama", "llama4", "glmocr",
};
}  // namespace

bool translate_metadata(const llama_model_loader *, gguf_context *, ggml_context *, std::string & arch_name,
                        const char * fname) {
    for (const char * translated : kTranslated) {
        if (arch_name == translated) {
            throw std::runtime_error("ollama translates '" + arch_name + "' files at load time (llama/compat); "
                                     "this runner does not carry that translation");
        }
    }
    std::fprintf(stderr, "llama-ollama-compat: %s: architecture '%s' has no ollama translation; loaded as it is\n",
                 fname ? fname : "?", arch_name.c_str());
    return false;
}

bool should_skip_tensor(const llama_model_loader *, const char *) { return false; }

bool maybe_load_text_tensor(const llama_model_loader *, ggml_tensor *, size_t) { return false; }

}  // namespace llama_ollama_compat
