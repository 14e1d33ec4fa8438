"""Running GGUF embedding models through llama-cpp-python."""
