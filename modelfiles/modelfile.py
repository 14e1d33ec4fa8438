"""ollama Modelfiles: the data model, the generator for embedding GGUFs, and a parser/checker for ollama's grammar.

The grammar follows docs/architecture.md ("ollama") and ollama's parser (parser/parser.go): instruction names are
case-insensitive, PARAMETER names are case-sensitive, `#` starts a comment only at the beginning of a line,
a value runs to the end of its line unless it is inside "…" or \"\"\"…\"\"\", and single quotes are ordinary
characters. Files are read as ollama reads them: UTF-8, or UTF-16 LE/BE when a byte-order mark says so.
ollama stops at the first problem; the checker reports them all so a file is fixed in one pass.
"""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import Keys

from granite_gguf.convert import keys
from granite_gguf.convert.inspect import GGUFSummary, read_summary
from granite_gguf.convert.types import OutType
from granite_gguf.errors import UserError
from granite_gguf.files import open_regular

# Accepted by every ollama server; generated Modelfiles use only FROM, PARAMETER, LICENSE and comments.
INSTRUCTIONS = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE")
NEWER_INSTRUCTIONS = ("REQUIRES", "RENDERER", "PARSER", "DRAFT")  # older servers refuse the whole file
MESSAGE_ROLES = ("system", "user", "assistant")

# ollama's api.Options JSON names and Go field types; `list` marks `stop`, which collects one string per line.
PARAMETERS: dict[str, type] = {
    "num_ctx": int, "num_batch": int, "num_thread": int, "num_gpu": int, "main_gpu": int, "use_mmap": bool,
    "num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float, "min_p": float,
    "typical_p": float, "repeat_last_n": int, "temperature": float, "repeat_penalty": float,
    "presence_penalty": float, "frequency_penalty": float, "stop": list,
}

# parser/parser.go deprecatedParameters: accepted, then dropped with "warning: parameter NAME is deprecated".
DEPRECATED_PARAMETERS = ("penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
                         "mirostat", "mirostat_tau", "mirostat_eta")
# parser.ParseFile's decoder, unicode.BOMOverride(UTF8): a BOM picks the encoding and is dropped.
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))

_INT = re.compile(r"[+-]?[0-9]+")  # Go strconv.ParseInt(s, 10, 64): no spaces, no underscores
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # decimal ParseFloat(s, 32)
_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}  # Go ParseBool
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Problem:
    line: int
    message: str


@dataclass(frozen=True)
class Instruction:
    """One instruction; `name` is the PARAMETER name or the MESSAGE role, `line` where it starts (0: generated)."""

    keyword: str  # upper-case
    value: str  # unquoted
    name: str = ""
    line: int = 0
    quoted: bool = False  # written inside "…" or """…"""

    def render(self) -> str:
        # LICENSE is always triple-quoted so license texts with newlines and quotes stay one value.
        value = _quote(self.value, force=self.keyword == "LICENSE")
        return " ".join(part for part in (self.keyword, self.name, value) if part)


@dataclass
class Modelfile:
    instructions: list[Instruction]
    comments: list[str] = field(default_factory=list)  # written as `# …` lines above the instructions

    def values(self, keyword: str) -> list[str]:
        return [ins.value for ins in self.instructions if ins.keyword == keyword]

    def parameters(self) -> dict[str, Any]:
        """The PARAMETERs as ollama stores them in the params layer: typed, `stop` collected, else the last wins."""
        params: dict[str, Any] = {}
        for ins in self.instructions:
            if ins.keyword == "PARAMETER" and ins.name not in DEPRECATED_PARAMETERS:
                value = parameter_value(ins.name, ins.value)
                params[ins.name] = [*params.get(ins.name, []), value] if PARAMETERS[ins.name] is list else value
        return dict(sorted(params.items()))

    def render(self) -> str:
        comments = ["# " + " ".join(comment.splitlines()) for comment in self.comments]
        return "\n".join(comments + [ins.render() for ins in self.instructions]) + "\n"


def parameter_value(name: str, value: str) -> int | float | bool | str:
    """`value` converted the way ollama converts PARAMETER `name`; ValueError says why ollama would refuse it."""
    if name in DEPRECATED_PARAMETERS:
        raise ValueError(f"parameter {name} is deprecated: ollama ignores it")
    kind = PARAMETERS.get(name)
    if kind is None:
        hint = f" (parameter names are lower-case: {name.lower()})" if name.lower() in PARAMETERS else ""
        raise ValueError(f"unknown parameter {name!r}{hint}")
    if kind in (str, list):
        return value
    if kind is bool and value in _BOOLS:
        return _BOOLS[value]
    if kind is int and _INT.fullmatch(value) and -(2**63) <= int(value) < 2**63:
        return int(value)
    if kind is float and _FLOAT.fullmatch(value) and abs(float(value)) <= _FLOAT32_MAX:
        return float(value)
    hint = " ('#' starts a comment only at the beginning of a line)" if "#" in value else ""
    raise ValueError(f"{name}: invalid {kind.__name__} value {value!r}{hint}")


def parse_modelfile(text: str) -> tuple[Modelfile, list[Problem]]:
    """Split `text` into instructions as ollama does; syntax problems are collected and their lines skipped."""
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    instructions: list[Instruction] = []
    problems: list[Problem] = []
    index = 0
    while index < len(lines):
        start, line = index + 1, lines[index].lstrip(" \t")
        index += 1
        if not line or line.startswith("#"):
            continue
        word, rest = _split_word(line)
        if not word.isascii() or not word.isalpha():
            problems.append(Problem(start, f"{word!r} is not an instruction (a name of letters, then a space)"))
            continue
        keyword, name = word.upper(), ""
        if keyword in ("PARAMETER", "MESSAGE"):
            name, rest = _split_word(rest)
            if not re.fullmatch(r"[A-Za-z0-9_]*" if keyword == "PARAMETER" else r"[A-Za-z]*", name):
                problems.append(Problem(start, f"{keyword}: invalid character in {name!r}"))
                continue
        value = _unquote(rest.strip())
        while value is None and index < len(lines):
            rest += "\n" + lines[index]
            index += 1
            value = _unquote(rest.strip())
        if value is None:
            problems.append(Problem(start, "unterminated quote: the value runs to the end of the file"))
            break
        instructions.append(Instruction(keyword, value, name, start, quoted=rest.strip().startswith('"')))
    return Modelfile(instructions), problems


# parser.go CreateRequest and server/create.go: every FROM naming a file adds its layers to the one model.
_TWO_FROMS = ("ollama keeps both: each FROM file becomes a layer of one model (only a FROM naming a model "
              "replaces the earlier one); granite-gguf installs one GGUF")


def read_modelfile(path: Path) -> str:
    """The text of a Modelfile, decoded as ollama decodes it; an unreadable file is a UserError."""
    try:
        with open_regular(path) as handle:  # a FIFO is refused, not waited on
            data = handle.read()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    return decode_modelfile(data)


def decode_modelfile(data: bytes) -> str:
    """UTF-8, or what a leading byte-order mark names (PowerShell 5 writes UTF-16 LE with one); bad bytes as U+FFFD."""
    bom, encoding = next(((bom, encoding) for bom, encoding in _BOMS if data.startswith(bom)), (b"", "utf-8"))
    return data[len(bom):].decode(encoding, errors="replace")


def check_modelfile(text: str) -> list[Problem]:
    """Every reason an ollama server (old or new) would refuse `text`, or would read it otherwise than meant."""
    return _checked(text)[1]


def load_modelfile(path: Path) -> Modelfile:
    """Read and check a Modelfile; any problem is a UserError naming the first one."""
    modelfile, problems = _checked(read_modelfile(path))
    if problems:
        more = f" (and {len(problems) - 1} more; see granite-gguf modelfile --check)" if len(problems) > 1 else ""
        raise UserError(f"{path}:{problems[0].line}: {problems[0].message}{more}")
    return modelfile


def _checked(text: str) -> tuple[Modelfile, list[Problem]]:
    modelfile, problems = parse_modelfile(text)
    first_line: dict[tuple[str, str], int] = {}
    for ins in modelfile.instructions:
        message = _instruction_problem(ins)
        key = (ins.keyword, ins.name)
        if message is None and _single_valued(ins):
            if key in first_line:
                message = f"{_label(ins)} repeats line {first_line[key]}; " + (
                    _TWO_FROMS if ins.keyword == "FROM" else "ollama keeps only the last one")
            first_line.setdefault(key, ins.line)
        if message:
            problems.append(Problem(ins.line, message))
    if not modelfile.values("FROM"):
        problems.append(Problem(1, "no FROM line: a Modelfile must name its model"))
    return modelfile, sorted(problems, key=lambda problem: problem.line)


def _instruction_problem(ins: Instruction) -> str | None:
    if ins.keyword in NEWER_INSTRUCTIONS:
        return f"{ins.keyword}: only newer ollama servers accept this instruction"
    if ins.keyword not in INSTRUCTIONS:
        return f"unknown instruction {ins.keyword!r}; expected one of {', '.join(INSTRUCTIONS)}"
    if not ins.value:
        return f"{_label(ins)} has no value"
    if not ins.quoted and len(ins.value) > 1 and ins.value[0] == ins.value[-1] == "'":
        return f"single quotes are not quotes in a Modelfile: the value is {ins.value} with its quotes"
    if ins.keyword == "MESSAGE" and ins.name not in MESSAGE_ROLES:
        return f"MESSAGE role {ins.name!r} must be one of {', '.join(MESSAGE_ROLES)}"
    if ins.keyword == "PARAMETER":
        try:
            parameter_value(ins.name, ins.value)
        except ValueError as exc:
            return str(exc)
    return None


def _single_valued(ins: Instruction) -> bool:
    """LICENSE, MESSAGE, ADAPTER and `stop` add up; any other repeat silently replaces the earlier value."""
    return ins.keyword in ("FROM", "TEMPLATE", "SYSTEM") or (ins.keyword == "PARAMETER" and PARAMETERS[ins.name] is not list)


def _label(ins: Instruction) -> str:
    return f"{ins.keyword} {ins.name}".strip()


def _split_word(text: str) -> tuple[str, str]:
    """The text up to the first space or tab, and what follows that one separator (ollama's state change)."""
    end = next((i for i, ch in enumerate(text) if ch in " \t"), len(text))
    return text[:end], text[end + 1 :]


def _unquote(text: str) -> str | None:
    """ollama's unquote: \"\"\"…\"\"\" or "…" around the whole value, else the text as it is; None while a quote is open."""
    if text.startswith('"""'):
        return text[3:-3] if len(text) >= 6 and text.endswith('"""') else None
    if text.startswith('"'):
        return text[1:-1] if len(text) >= 2 and text.endswith('"') else None
    return text


def _quote(value: str, force: bool = False) -> str:
    """The shortest form `_unquote` reads back as `value` (ollama's rule: quote only what needs it)."""
    if not force and "\n" not in value and value == value.strip() and not value.startswith('"'):
        return value
    if not force and '"' not in value:
        return f'"{value}"'
    if '"""' in value:
        raise UserError(f"a Modelfile value cannot contain three double quotes in a row: {value[:60]!r}")
    return f'"""{value}"""'


@dataclass(frozen=True)
class ModelFacts:
    """What a Modelfile for an embedding GGUF is generated from; shipped Modelfiles fill it in without a GGUF."""

    name: str
    context_length: int
    file_type: str  # converter label: f16, q8_0, …
    license: str | None
    pooling: str
    converter: str  # provenance: the converter version, or for shipped files the command that makes the GGUF

    @classmethod
    def from_summary(cls, summary: GGUFSummary) -> ModelFacts:
        meta = summary.metadata
        context = summary.arch_value("context_length")
        if context is None:
            raise UserError(f"{summary.path}: no context_length in the GGUF metadata; cannot size num_ctx")
        version = meta.get(keys.CONVERTER_VERSION)
        return cls(
            name=meta.get(Keys.General.NAME) or summary.path.stem,
            context_length=int(context),
            file_type=file_type_label(summary),
            license=meta.get(Keys.General.LICENSE),
            pooling=summary.pooling,
            converter=f"granite-gguf {version}" if version else "unknown",
        )


def file_type_label(summary: GGUFSummary) -> str:
    """`MOSTLY_Q8_0` → `q8_0`: the converter's label, and (upper-cased) the file type ollama shows."""
    output = OutType.for_file_type(summary.file_type)
    if output is None:
        raise UserError(f"{summary.path}: file type {summary.file_type_name} is not one granite-gguf writes")
    return output.label


def embedding_modelfile(facts: ModelFacts, source: str | None = None) -> Modelfile:
    """The one recipe for every generated Modelfile; `source` defaults to ./<name>-<type>.gguf beside it.

    num_batch equals num_ctx because ollama ≥ 0.30 defaults num_batch to min(2048, num_ctx) and truncates
    embedding inputs longer than the batch.
    """
    context = str(facts.context_length)
    instructions = [
        Instruction("FROM", source or f"./{facts.name}-{facts.file_type}.gguf"),
        Instruction("PARAMETER", context, "num_ctx"),
        Instruction("PARAMETER", context, "num_batch"),
    ]
    if facts.license:
        instructions.append(Instruction("LICENSE", facts.license))
    comments = [
        f"model: {facts.name}",
        f"file type: {facts.file_type}",
        f"pooling: {facts.pooling}",
        f"converter: {facts.converter}",
        "num_batch = num_ctx: ollama >= 0.30 defaults num_batch to min(2048, num_ctx) and truncates longer inputs",
    ]
    return Modelfile(instructions, comments)


def generate_modelfile(gguf_path: Path, modelfile_path: Path) -> str:
    """The Modelfile text for `gguf_path`, to be saved at `modelfile_path` (FROM is relative to its folder)."""
    facts = ModelFacts.from_summary(read_summary(gguf_path))
    relative = Path(os.path.relpath(gguf_path.resolve(), modelfile_path.resolve().parent)).as_posix()
    return embedding_modelfile(facts, relative if relative.startswith("../") else f"./{relative}").render()
