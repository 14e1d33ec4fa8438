#!/usr/bin/env bash
# The long fuzz run: tests/test_fuzz.py with 10,000 generated cases per input kind (the test suite runs
# 200), each kind bounded to 20 minutes. Prints hypothesis' statistics; any crash fails the run.
#   bash scripts/fuzz.sh [EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-10000}"
for kind in gguf_check gguf_hyperparameters registry_manifest safetensors_header config_json tokenizer_json modelfile ollama_name server_request_bodies; do
    echo "== $kind: $examples cases"
    FUZZ_EXAMPLES="$examples" timeout 1200 .venv/bin/python -m pytest -q "tests/test_fuzz.py::test_$kind" \
        --hypothesis-show-statistics | grep -E "passed|failed|error|Stopped because|typical runtimes|- [0-9]+ passing"
done
