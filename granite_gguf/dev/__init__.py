"""Development-only code: the deterministic tiny checkpoints (`granite-gguf fixture`, `demo`, the tests, the
benchmarks) and the real-vocabulary fixture. Nothing in the converter, the runtime or ollama packaging imports it."""
