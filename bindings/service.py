"""What the embeddings server answers, apart from HTTP: request bodies checked and read as OpenAI,
ollama and llama-server read them, batched Embedder calls, and answers and errors in each API's shape.

The rules follow the servers clients are written against (tests/test_server_compat.py translates
their tests): ollama's `server/routes.go` EmbedHandler and EmbeddingsHandler and `api/types.go`
EmbedRequest (commit fb30760), and llama-server's `handle_embeddings` (the llama.cpp inside
llama-cpp-python 0.3.36, tools/server/server-context.cpp). Where they differ from OpenAI's API, each
route follows its own API; docs/serving.md lists every choice.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from granite_gguf.bindings.batching import (
    DEFAULT_MAX_BATCH_INPUTS,
    Batcher,
    Input,
    LimitTooSmall,
    Options,
    Overloaded,
    TooLong,
)
from granite_gguf.bindings.defaults import Limits
from granite_gguf.bindings.embedder import (
    Embedder,
    Embeddings,
    LongInputs,
    NonFiniteVectorError,
    default_layout,
    usable_threads,
)
from granite_gguf.bindings.metrics import Metrics
from granite_gguf.errors import UserError

log = logging.getLogger(__name__)

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# ollama's own wording (server/routes.go, fb30760), which its clients and tests match on
OLLAMA_TOO_LONG = "the input length exceeds the context length"
OLLAMA_NO_ROOM = "input after truncation exceeds maximum context length"
OLLAMA_NON_FINITE = "embedding contains NaN or Inf values"
# What LangChain's OpenAIEmbeddings sends by default: tiktoken ids, not this model's (docs/serving.md)
TOKEN_ID_HINT = ("token ids must come from this model's tokenizer; LangChain's OpenAIEmbeddings sends tiktoken ids "
                 "unless check_embedding_ctx_length=False")


class RequestError(Exception):
    """A request answered with `status` and the message in its API's error shape; the server keeps going."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


@dataclass
class ServedModel:
    """One GGUF file under the name clients ask for, with the Batcher whose workers run it."""

    name: str
    batcher: Batcher

    @property
    def embedder(self) -> Embedder:
        return self.batcher.embedders[0]  # for the file's facts; every worker loads the same file

    @property
    def path(self) -> Path:
        return self.embedder.path

    def matches(self, asked: str) -> bool:
        """ollama's rule: names compare case-insensitively and a missing tag means `latest`."""
        return _canonical(asked) == _canonical(self.name)


@dataclass(frozen=True)
class Pool:
    """How each served file is loaded: `workers` Embedders of `threads` threads each (a Batcher's workers, one
    llama.cpp context each), with the Embedder's settings."""

    workers: int
    threads: int
    max_tokens: int | None = None
    gpu_layers: int = 0
    unsafe_skip_check: bool = False
    batch_inputs: int = DEFAULT_MAX_BATCH_INPUTS  # inputs of concurrent requests packed into one call

    @classmethod
    def sized(cls, threads: int | None, workers: int | None, **settings: Any) -> Pool:
        """`threads` CPUs in all (default: those this process may use) split between `workers` Embedders (default:
        the Embedder's `default_layout`, one per thread, the fastest measured on CPU)."""
        total = threads or usable_threads()
        workers = default_layout(total).workers if workers is None else workers
        if workers < 1:
            raise UserError(f"workers must be positive, got {workers}")
        return cls(workers, max(1, total // workers), **settings)

    def batcher(self, path: Path) -> Batcher:
        """`workers` Embedders of `path` behind a Batcher (all closed again if one fails to load)."""
        embedders: list[Embedder] = []
        try:
            for _ in range(self.workers):
                embedders.append(Embedder(path, n_threads=self.threads, max_tokens=self.max_tokens,
                                          gpu_layers=self.gpu_layers, unsafe_skip_check=self.unsafe_skip_check,
                                          workers=1))
        except BaseException:
            for embedder in embedders:
                embedder.close()
            raise
        return Batcher(embedders, max_batch_inputs=self.batch_inputs)


def _canonical(name: str) -> str:
    name = name.strip().casefold()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


@dataclass(frozen=True)
class Answer:
    """An embedding call's result as the routes need it: rows, and tokens embedded (after any cut)."""

    vectors: np.ndarray
    tokens: int


class EmbeddingService:
    """Validates request bodies and turns them into batched Embedder calls and API-shaped answers."""

    def __init__(self, models: Sequence[ServedModel], long_inputs: LongInputs = LongInputs.TRUNCATE,
                 limits: Limits = Limits()) -> None:
        if not models:
            raise ValueError("an EmbeddingService needs at least one model")
        names = [model.name for model in models]
        duplicates = sorted({_canonical(n) for n in names if sum(_canonical(m) == _canonical(n) for m in names) > 1})
        if duplicates:
            raise UserError(f"two models under the same name: {', '.join(duplicates)}")
        self.models = list(models)
        self.long_inputs = long_inputs
        self.limits = limits
        self.metrics = Metrics()
        for model in self.models:
            model.batcher.on_batch = self.metrics.batch_inputs.labels(model.name).observe
        self.metrics.watch_models(lambda: [(m.name, m.batcher.queued_inputs, m.embedder.model_bytes)
                                           for m in self.models])

    @classmethod
    def load(cls, files: Sequence[tuple[str, Path]], pool: Pool, long_inputs: LongInputs = LongInputs.TRUNCATE,
             limits: Limits = Limits()) -> EmbeddingService:
        """The service over each (name, GGUF) of `files`, loaded as `pool` says; whatever was loaded is closed again
        if a file fails to load or the service refuses the set."""
        models: list[ServedModel] = []
        try:
            for name, path in files:
                models.append(ServedModel(name, pool.batcher(path)))
                log.info("loaded %s (%s): %.1f MiB of tensors, %d worker(s)", name, path,
                         models[-1].embedder.model_bytes / 2**20, pool.workers)
            return cls(models, long_inputs, limits)
        except BaseException:
            for model in models:
                model.batcher.close()
            raise

    def close(self) -> None:
        """Finish every queued request and close every model's Embedders."""
        for model in self.models:
            model.batcher.close()

    @property
    def default(self) -> ServedModel:
        """The model an OpenAI or llama.cpp request without `model` gets (llama-server serves one model)."""
        return self.models[0]

    # ---- OpenAI (and llama-server's /embeddings) ----

    async def openai_embeddings(self, body: dict[str, Any], native: bool = False) -> Any:
        """OpenAI's `/v1/embeddings`; with `native` (llama-server's `/embeddings`, or a `content` body instead of
        `input`) llama-server's own answer: a list of {index, embedding: [vector]}."""
        model = self._openai_model(body.get("model"))
        if "input" not in body and "content" in body:
            native, value = True, body["content"]
        else:
            value = body.get("input")
        inputs = self._openai_inputs(value, model)
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise RequestError("encoding_format must be 'float' or 'base64'", param="encoding_format")
        dim = self._openai_dimensions(body.get("dimensions"), model)
        normalize = _embd_normalize(body.get("embd_normalize", 2))
        long_inputs = self._long_inputs(body.get("truncate"))
        answer = await self._embed(model, inputs, Options(dim, long_inputs, normalize), "openai")
        if native:
            return [{"index": i, "embedding": [v.tolist()]} for i, v in enumerate(answer.vectors)]
        data = [{"object": "embedding", "index": i, "embedding": _encoded(v, encoding)}
                for i, v in enumerate(answer.vectors)]
        usage = {"prompt_tokens": answer.tokens, "total_tokens": answer.tokens}
        return {"object": "list", "data": data, "model": model.name, "usage": usage}

    # ---- ollama ----

    async def ollama_embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """ollama's `/api/embed`: EmbedHandler's checks, truncation to `options.num_ctx`, and answer."""
        started = time.perf_counter_ns()
        asked = body.get("model")
        model = self._ollama_model(asked, f"model '{asked if isinstance(asked, str) else ''}' not found")
        inputs = _ollama_inputs(body.get("input"), self.limits.max_inputs)
        truncate = body.get("truncate")
        if truncate is not None and not isinstance(truncate, bool):
            raise RequestError("truncate must be true or false", param="truncate")
        dimensions = body.get("dimensions", 0)
        if dimensions is None:
            dimensions = 0
        if not _is_int(dimensions):
            raise RequestError("dimensions must be an integer", param="dimensions")
        # ollama: 0 < dimensions < width cuts and re-normalizes; anything else is the full width
        dim = dimensions if 0 < dimensions < model.embedder.dimension else None
        self._note_untrained(model, dim)
        max_tokens = _num_ctx(body.get("options"))
        if not inputs:  # ollama answers an empty input with no vectors (clients use it to load a model)
            return {"model": asked, "embeddings": []}
        options = Options(dim, self._long_inputs(truncate), True, max_tokens)
        answer = await self._embed(model, inputs, options, "ollama")
        return {"model": asked, "embeddings": answer.vectors.tolist(), "total_duration": time.perf_counter_ns() - started,
                "load_duration": 0, "prompt_eval_count": answer.tokens}

    async def ollama_embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        """ollama's older `/api/embeddings`: one `prompt`, the model's vector without extra normalization."""
        asked = body.get("model")
        if not isinstance(asked, str) or not asked:
            raise RequestError("model is required", param="model")
        model = self._ollama_model(asked, f'model "{asked}" not found, try pulling it first')
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise RequestError("prompt must be a string", param="prompt")
        if not prompt:  # as ollama: an empty prompt loads the model and returns no vector
            return {"embedding": []}
        answer = await self._embed(model, [prompt], Options(long_inputs=self.long_inputs, normalize=False), "ollama")
        return {"embedding": answer.vectors[0].tolist()}

    # ---- listings ----

    def models_list(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m.name, "object": "model", "owned_by": "granite-gguf"}
                                           for m in self.models]}

    def tags(self) -> dict[str, Any]:
        """ollama's listing; `details` as ollama fills it from the file (format, family)."""
        return {"models": [{"name": m.name, "model": m.name, "size": m.path.stat().st_size,
                            "details": {"format": "gguf",
                                        "family": m.embedder.summary.metadata.get("general.architecture", "")}}
                           for m in self.models]}

    # ---- shared ----

    def _openai_model(self, asked: Any) -> ServedModel:
        if asked is None or asked == "":
            return self.default
        if not isinstance(asked, str):
            raise RequestError("model must be a string", param="model")
        for model in self.models:
            if model.matches(asked):
                return model
        raise RequestError(f"The model `{asked}` does not exist or you do not have access to it.",
                           HTTPStatus.NOT_FOUND, param="model", code="model_not_found")

    def _ollama_model(self, asked: Any, not_found: str) -> ServedModel:
        if isinstance(asked, str):
            for model in self.models:
                if model.matches(asked):
                    return model
        raise RequestError(not_found, HTTPStatus.NOT_FOUND, param="model")

    def _long_inputs(self, truncate: Any) -> LongInputs:
        """A request's `truncate` over the server's --long-inputs: false refuses long inputs, true cuts
        them (or chunks them, on a server started with --long-inputs chunk)."""
        if truncate is None:
            return self.long_inputs
        if not isinstance(truncate, bool):
            raise RequestError("truncate must be true or false", param="truncate")
        if not truncate:
            return LongInputs.ERROR
        return LongInputs.TRUNCATE if self.long_inputs is LongInputs.ERROR else self.long_inputs

    def _openai_inputs(self, value: Any, model: ServedModel) -> list[Input]:
        """OpenAI's input (a string, strings, token ids, lists of token ids) and llama-server's objects."""
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [_object_text(value, 0)]
        if not isinstance(value, list) or not value:
            raise RequestError("input must be a string, a non-empty list of strings, a list of token ids or a list "
                               "of such lists", param="input")
        if len(value) > self.limits.max_inputs:
            raise RequestError(f"input has {len(value)} items; at most {self.limits.max_inputs} per request",
                               param="input")
        if any(_is_int(item) for item in value):  # one sequence of token ids
            return [_sequence(value, 0, model.embedder)]
        inputs: list[Input] = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                inputs.append(item)
            elif isinstance(item, list):
                inputs.append(_sequence(item, index, model.embedder))
            elif isinstance(item, dict):
                inputs.append(_object_text(item, index))
            else:
                raise RequestError("input must be a string, a list of strings, a list of token ids or a list of "
                                   "such lists", param="input")
        return inputs

    def _openai_dimensions(self, value: Any, model: ServedModel) -> int | None:
        width = model.embedder.dimension
        if value is None:
            return None
        if not _is_int(value) or not 1 <= value <= width:
            raise RequestError(f"dimensions must be an integer from 1 to {width}", param="dimensions")
        dim = value if value < width else None
        self._note_untrained(model, dim)
        return dim

    def _note_untrained(self, model: ServedModel, dim: int | None) -> None:
        """Any width is served, as ollama does; a width the model was not trained for is worth a log line."""
        if dim is not None and dim not in model.embedder.matryoshka_dims:
            trained = ", ".join(map(str, model.embedder.matryoshka_dims)) or "none but the full width"
            log.info("[%s] dimensions %d is not a trained Matryoshka size of %s (trained: %s); cut and re-normalized",
                     request_id.get(), dim, model.name, trained)

    async def _embed(self, model: ServedModel, inputs: list[Input], options: Options, api: str) -> Answer:
        """The rows and tokens embedded, or a RequestError worded for `api` ("openai" or "ollama")."""
        batcher = model.batcher
        try:
            future = batcher.submit(inputs, options, request_id.get())
        except Overloaded as exc:
            raise RequestError(f"server busy: {exc}", HTTPStatus.SERVICE_UNAVAILABLE) from None
        except LimitTooSmall as exc:
            raise RequestError(OLLAMA_NO_ROOM if api == "ollama" else str(exc), param="options") from None
        try:
            result: Embeddings = await asyncio.wrap_future(future)
        except TooLong as exc:
            raise _too_long(exc, api) from None
        except NonFiniteVectorError:  # the Embedder's check: the file's fault, a 500
            raise RequestError(f"{OLLAMA_NON_FINITE}: the model file gives no usable vectors (check the GGUF)",
                               HTTPStatus.INTERNAL_SERVER_ERROR) from None
        except UserError as exc:
            raise RequestError(str(exc)) from None
        limit = batcher.limit(options)
        tokens = sum(min(n, limit) if cut else n for n, cut in zip(result.token_counts, result.truncated))
        self.metrics.inputs.labels(model.name).inc(len(inputs))
        self.metrics.tokens.labels(model.name).inc(tokens)
        return Answer(result.vectors, tokens)


def _too_long(exc: TooLong, api: str) -> RequestError:
    """The long-input error in the API's words, naming the HTTP field that changes it."""
    if api == "ollama":  # both of ollama's wordings, old (embed_truncation_test.go) and new (routes.go)
        return RequestError(f'{OLLAMA_TOO_LONG}: input {exc.index} has {exc.tokens} tokens and exceeds maximum '
                            f'context length {exc.limit}; send "truncate": true to cut it', param="truncate")
    return RequestError(f'input {exc.index} ({exc.tokens} tokens) is too large: at most {exc.limit} tokens per input; '
                        f'send "truncate": true to cut it', param="input", code="context_length_exceeded")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sequence(value: list[Any], index: int, embedder: Embedder) -> tuple[int, ...]:
    """Token ids as OpenAI's API takes them, each inside the model's vocabulary; strings among them are read
    as llama-server's tokenize_mixed reads them (a first string with the special tokens, later ones without)."""
    if not value:
        raise RequestError(f"input {index} is an empty list of token ids", param="input")
    if not all(_is_int(token) or isinstance(token, str) for token in value):
        raise RequestError(f"input {index} must be a list of token ids (or of token ids and strings)", param="input")
    tokens: list[int] = []
    for position, piece in enumerate(value):
        tokens += embedder.tokenize(piece, add_special=position == 0) if isinstance(piece, str) else [piece]
    vocab_size = embedder.vocab_size
    bad = next((token for token in tokens if not 0 <= token < vocab_size), None)
    if bad is not None:
        raise RequestError(f"input {index}: token id {bad} is outside this model's vocabulary (0 to {vocab_size - 1}); "
                           f"{TOKEN_ID_HINT}", param="input")
    return tuple(tokens)


def _object_text(value: dict[str, Any], index: int) -> str:
    """llama-server's object inputs: {"prompt_string": text} and {"content": [{"type": "text", "text": …}, …]}."""
    if isinstance(value.get("prompt_string"), str):
        if "multimodal_data" in value:
            raise RequestError(f"input {index}: this model takes no multimodal data", param="input")
        return value["prompt_string"]
    content = value.get("content")
    if not isinstance(content, list) or not content:
        raise RequestError(f"input {index}: an object input needs a string prompt_string or a content list of text "
                           f"parts", param="input")
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise RequestError(f"input {index}: content part {kind!r} is not supported; this model embeds text "
                               f"parts only", param="input")
        texts.append(part["text"])
    return "".join(texts)


def _ollama_inputs(value: Any, max_inputs: int) -> list[Input]:
    """EmbedHandler's input: a string (empty: none) or a list of strings; anything else "invalid input type"."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequestError("invalid input type", param="input")
    if len(value) > max_inputs:
        raise RequestError(f"input has {len(value)} items; at most {max_inputs} per request", param="input")
    return list(value)


def _num_ctx(options: Any) -> int | None:
    """`options.num_ctx` (ollama's per-request context: inputs are cut to it, or refused with truncate false)."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise RequestError("options must be an object", param="options")
    value = options.get("num_ctx")
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # Go's JSON reads every number of a map as float64
        value = int(value)
    if not _is_int(value):
        raise RequestError("options.num_ctx must be an integer", param="options")
    return value


def _embd_normalize(value: Any) -> bool:
    """llama-server's `embd_normalize`: 2 (Euclidean, the default) or -1 (none); the others are not served."""
    if value == 2 and _is_int(value):
        return True
    if value == -1 and _is_int(value):
        return False
    raise RequestError("embd_normalize must be 2 (Euclidean) or -1 (none); this server serves no other norm",
                       param="embd_normalize")


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    """OpenAI's base64 form: the little-endian float32 bytes, as its client decodes them."""
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
