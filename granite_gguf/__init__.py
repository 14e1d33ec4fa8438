"""granite-gguf: IBM Granite Embedding R2 (ModernBERT) checkpoints to verified GGUF files."""

__version__ = "0.1.0"
