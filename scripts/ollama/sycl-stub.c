/* A CPU-only stand-in for ipex-llm's libollama-ggml-sycl.so (scripts/install-ollama.sh).
 *
 * ollama 0.5.4-ipexllm's libraries import three symbols from it: libollama_ggml.so calls
 * ggml_backend_sycl_reg() while registering backends (NULL: no SYCL backend, ggml keeps its CPU one),
 * libollama_llava_shared.so ggml_backend_sycl_init() and libollama_llama.so
 * ggml_backend_sycl_get_device_name(), which are only reached with a SYCL device. The real library
 * aborts every command, even --version, on a machine without an Intel GPU. */
#include <stddef.h>

void *ggml_backend_sycl_reg(void) { return NULL; }

void *ggml_backend_sycl_init(int device) {
    (void)device;
    return NULL;
}

void ggml_backend_sycl_get_device_name(int device, char *description, size_t description_size) {
    (void)device;
    if (description != NULL && description_size > 0) {
        description[0] = '\0';
    }
}
