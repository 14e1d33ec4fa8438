"""The request and answer bodies of every route as pydantic models, for `/openapi.json` and `/docs`.

They describe; bindings/service.py checks (each API's own rules and error wording, which a generic
validator would not give: ollama's "invalid input type", OpenAI's error object). Unknown fields are
accepted and ignored, as OpenAI and ollama do (`user`, `keep_alive`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TokenIds = list[int]
TextPart = dict[str, str]  # {"type": "text", "text": "…"}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PromptObject(_Open):
    """llama-server's object input: a text under `prompt_string`, or `content` text parts (joined)."""

    prompt_string: str | None = None
    content: list[TextPart] | None = None


OpenAIInput = str | list[str] | TokenIds | list[TokenIds] | PromptObject | list[str | TokenIds | PromptObject]


class OpenAIEmbeddingRequest(_Open):
    model: str | None = Field(None, description="a served model; absent: the first one")
    input: OpenAIInput = Field(description="text(s), token ids (checked against the vocabulary) or llama-server's "
                                           "object inputs; token ids and strings may mix in one input")
    dimensions: int | None = Field(None, description="1..width: the first values, L2-normalized again")
    encoding_format: Literal["float", "base64"] = "float"
    truncate: bool | None = Field(None, description="extension: false refuses inputs past the token limit, true cuts "
                                                    "them; absent: the server's --long-inputs")
    embd_normalize: Literal[2, -1] = Field(2, description="llama-server's: 2 Euclidean, -1 the model's own output")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="tokens embedded, after any cut")
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: Usage


class LlamaServerEmbedding(BaseModel):
    index: int
    embedding: list[list[float]] = Field(description="one pooled vector per input")


class OllamaOptions(_Open):
    num_ctx: int | None = Field(None, description="tokens per input: longer ones are cut (or refused with truncate "
                                                  "false)")


class OllamaEmbedRequest(_Open):
    model: str
    input: str | list[str] | None = None
    truncate: bool | None = Field(None, description="default true: cut inputs to the context; false: refuse them")
    dimensions: int | None = Field(None, description="0 < d < width: the first d values, normalized again")
    options: OllamaOptions | None = None
    keep_alive: str | int | None = Field(None, description="accepted, ignored (models stay loaded)")


class OllamaEmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class OllamaEmbeddingsRequest(_Open):
    model: str
    prompt: str = ""


class OllamaEmbeddingsResponse(BaseModel):
    embedding: list[float]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OllamaTag(_Open):
    name: str
    model: str
    size: int


class OllamaTags(BaseModel):
    models: list[OllamaTag]


class OllamaVersion(BaseModel):
    version: str


class Health(BaseModel):
    status: Literal["ok"]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


class OllamaError(BaseModel):
    error: str
