# The two front-door commands (see README.md). Both install into .venv first; installs are idempotent.
.PHONY: demo test lint

demo:
	bash scripts/install.sh verify
	.venv/bin/granite-gguf demo --outdir out

test:
	bash scripts/install.sh test
	bash scripts/install-test-services.sh
	bash scripts/build-llama-server.sh
	bash scripts/build-ollama-runner.sh
	.venv/bin/ruff check .
	.venv/bin/python scripts/typecheck.py
	.venv/bin/python -m pytest -q

lint:
	bash scripts/install.sh test
	.venv/bin/ruff check .
	.venv/bin/python scripts/typecheck.py
