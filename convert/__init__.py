"""Checkpoint → GGUF: source reading, the modern-bert unit, tokenizer mapping, streaming writer."""
