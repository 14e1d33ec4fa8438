"""The Modelfiles shipped in modelfiles/granite-r2/, generated from the models' published facts (docs/architecture.md, "The models").

Regenerate after changing the generator: `python -m granite_gguf.modelfiles.granite_r2`.
"""

from __future__ import annotations

from pathlib import Path

from granite_gguf.modelfiles.modelfile import ModelFacts, embedding_modelfile

CONTEXT_LENGTHS = {
    "granite-embedding-311m-multilingual-r2": 32768,
    "granite-embedding-97m-multilingual-r2": 32768,
    "granite-embedding-english-r2": 8192,
    "granite-embedding-small-english-r2": 8192,
}
FILE_TYPES = ("f16", "q8_0")
LICENSE = "apache-2.0"
FOLDER = Path(__file__).parent / "granite-r2"


def shipped_modelfiles() -> dict[str, str]:
    """File name → text of every shipped Modelfile; FROM names ./<model>-<type>.gguf beside the Modelfile."""
    files = {}
    for model, context in CONTEXT_LENGTHS.items():
        for file_type in FILE_TYPES:
            converter = f"granite-gguf convert ibm-granite/{model} --outtype {file_type}"
            facts = ModelFacts(model, context, file_type, LICENSE, pooling="CLS", converter=converter)
            files[f"{model}-{file_type}.Modelfile"] = embedding_modelfile(facts).render()
    return files


def write_shipped() -> None:
    FOLDER.mkdir(exist_ok=True)
    for name, text in shipped_modelfiles().items():
        (FOLDER / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_shipped()
