"""Reading a GGUF file apart from writing one: the bounded header parser, the check, remembered checks, the summary."""
