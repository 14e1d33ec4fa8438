"""The Modelfiles shipped in modelfiles/granite-r2/, generated from the models' published facts (granite_gguf.models).

Regenerate after changing the generator: `python -m granite_gguf.modelfiles.granite_r2`.
"""

from __future__ import annotations

from pathlib import Path

from granite_gguf.modelfiles.modelfile import ModelFacts, embedding_modelfile
from granite_gguf.models import DEFAULT_SET, MODELS

LICENSE = "apache-2.0"
FOLDER = Path(__file__).parent / "granite-r2"


def shipped_modelfiles() -> dict[str, str]:
    """File name → text of every shipped Modelfile; FROM names ./<model>-<type>.gguf beside the Modelfile."""
    files = {}
    for model in MODELS:
        for file_type in (outtype.label for outtype in DEFAULT_SET):
            converter = f"granite-gguf convert {model.hub_id} --outtype {file_type}"
            facts = ModelFacts(model.name, model.context_length, file_type, LICENSE, pooling="CLS", converter=converter)
            files[f"{model.name}-{file_type}.Modelfile"] = embedding_modelfile(facts).render()
    return files


def write_shipped() -> None:
    FOLDER.mkdir(exist_ok=True)
    for name, text in shipped_modelfiles().items():
        (FOLDER / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_shipped()
