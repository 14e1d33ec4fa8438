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
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from gguf import Keys

from granite_gguf.convert import keys
from granite_gguf.convert.types import OutType
from granite_gguf.errors import UserError
from granite_gguf.files import open_regular
from granite_gguf.gguf_file import GGUFSummary, load
from granite_gguf.modelfiles.gotemplate import template_error

# Accepted by every ollama server; generated Modelfiles use only FROM, PARAMETER, LICENSE and comments.
INSTRUCTIONS = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE")
NEWER_INSTRUCTIONS = ("REQUIRES", "RENDERER", "PARSER", "DRAFT")  # older servers refuse the whole file
MESSAGE_ROLES = ("system", "user", "assistant")

# ollama's api.Options JSON names and Go field types at fb30760 (draft_num_predict is new since 0.5.4); `list` marks
# `stop`, which collects one string per line.
PARAMETERS: dict[str, type] = {
    "num_ctx": int, "num_batch": int, "num_thread": int, "num_gpu": int, "main_gpu": int, "use_mmap": bool,
    "draft_num_predict": int,
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
# Go strconv.ParseFloat's syntax (Go float literals): decimal or hexadecimal (a hex mantissa needs a p exponent),
# '_' only between digits; inf and nan parse too, then json.Marshal fails on them, so ollama refuses them as well.
_DECIMAL = re.compile(r"[+-]?([0-9](_?[0-9])*(\.([0-9](_?[0-9])*)?)?|\.[0-9](_?[0-9])*)([eE][+-]?[0-9](_?[0-9])*)?")
_HEX = re.compile(r"[+-]?0[xX](_?[0-9a-fA-F])*(\.([0-9a-fA-F](_?[0-9a-fA-F])*)?)?[pP][+-]?[0-9](_?[0-9])*")
_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}  # Go ParseBool
_FLOAT32_OVERFLOW = Fraction(2**128 - 2**103)  # the largest float32 plus half an ulp: ParseFloat(s, 32) gives ErrRange


@dataclass(frozen=True)
class Problem:
    line: int
    message: str
    fatal: bool = True  # ollama refuses the file; False: it accepts it but reads it otherwise than it looks


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
    if kind is float:
        number = go_parse_float32(value)
        if number is not None:
            return number
    hint = (" ('#' starts a comment only at the beginning of a line)" if "#" in value else
            " (single quotes are not quotes in a Modelfile)" if len(value) > 1 and value[0] == value[-1] == "'" else "")
    raise ValueError(f"{name}: invalid {kind.__name__} value {value!r}{hint}")


def go_parse_float32(text: str) -> float | None:
    """strconv.ParseFloat(text, 32), the float32 rounded correctly from the exact decimal, given back as the shortest
    decimal that names it (what Go's JSON prints); None where ollama refuses the value (syntax, range, inf, nan)."""
    if _DECIMAL.fullmatch(text):
        exact = Fraction(text.replace("_", ""))
    elif _HEX.fullmatch(text):
        exact = Fraction(float.fromhex(text.replace("_", "")))
    else:
        return None
    if abs(exact) >= _FLOAT32_OVERFLOW:
        return None
    with np.errstate(over="ignore"):
        guess = np.float32(float(exact))  # at most one float32 off (double rounding)
        candidates = [c for c in (np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf)))
                      if np.isfinite(c)]
    best = min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(np.float32(c).view(np.uint32)) & 1))
    if best == 0 and text.lstrip().startswith("-"):
        best = np.float32(-0.0)
    return float(np.format_float_positional(best, unique=True, trim="-"))


def go_float32_json(value: float) -> str:
    """A float32 as Go's encoding/json writes it (floatEncoder, 32 bits): shortest digits, exponent form below 1e-6 and
    from 1e21, with e-07 shortened to e-7."""
    number = np.float32(value)
    size = abs(number)
    if size != 0 and (size < np.float32(1e-6) or size >= np.float32(1e21)):
        text = np.format_float_scientific(number, unique=True, trim="-", exp_digits=2)
        return re.sub(r"e-0([0-9])$", r"e-\1", text)
    return np.format_float_positional(number, unique=True, trim="-")


def parse_modelfile(text: str) -> tuple[Modelfile, list[Problem]]:
    """Split `text` into instructions as ollama's parser.ParseFile does; a syntax problem skips the rest of its line.

    A port of its rune-by-rune state machine (the same at ollama 0.5.4 and fb30760): a value ends at the first line
    break where the value so far, trimmed, is complete (unquoted, or a closed "…" / \"\"\"…\"\"\"); line breaks (CR and
    LF alike) inside an open quote are kept as they are, and characters Go's strconv.IsPrint rejects (no-break space,
    zero-width joiner, controls other than tab, CR, LF) are dropped. Unlike ollama (which re-trims the whole value at
    every line break), it runs in time linear in the text.
    """
    return _Parser(text.removeprefix("\ufeff")).run()


class _Parser:
    """One pass over the characters; `problems` collects what ollama would stop at, and the parser goes on."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.instructions: list[Instruction] = []
        self.problems: list[Problem] = []
        self.dropped: dict[int, list[str]] = {}  # line → characters ollama drops there

    def run(self) -> tuple[Modelfile, list[Problem]]:
        text, n = self.text, len(self.text)
        line, i = 1, 0
        while i < n:
            char = text[i]
            if char in "\r\n":
                line, i = line + 1, i + (2 if text.startswith("\r\n", i) else 1)
            elif char in " \t":
                i += 1
            elif char == "#":
                i = self._line_end(i)
            elif not _printable(char):  # ollama enters its name state on it but keeps nothing
                self.dropped.setdefault(line, []).append(char)
                i, line = self._instruction(i + 1, line)
            else:
                i, line = self._instruction(i, line)
        for where, chars in sorted(self.dropped.items()):
            names = ", ".join(dict.fromkeys(_char_name(char) for char in chars))
            self.problems.append(Problem(where, f"ollama drops characters Go does not print: {names}", fatal=False))
        return Modelfile(self.instructions), self.problems

    def _line_end(self, i: int) -> int:
        """The index of the next line break (or the end)."""
        ends = [j for j in (self.text.find("\n", i), self.text.find("\r", i)) if j >= 0]
        return min(ends, default=len(self.text))

    def _skip(self, i: int, line: int, message: str) -> tuple[int, int]:
        self.problems.append(Problem(line, message))
        return self._line_end(i), line

    def _word(self, i: int, allowed: str) -> tuple[str, int]:
        start = i
        while i < len(self.text) and self.text[i] in allowed:
            i += 1
        return self.text[start:i], i

    def _instruction(self, i: int, line: int) -> tuple[int, int]:
        text = self.text
        word, i = self._word(i, _LETTERS)
        if not word or i >= len(text) or text[i] not in " \t":
            if word.upper() in INSTRUCTIONS + NEWER_INSTRUCTIONS and (i >= len(text) or text[i] in "\r\n"):
                return self._skip(i, line, f"{word.upper()} has no value")
            bad = word + (text[i] if i < len(text) and text[i] not in "\r\n" else "")
            return self._skip(i, line, f"{bad!r} is not an instruction (a name of letters, then a space)")
        keyword, name, i = word.upper(), "", i + 1
        if keyword in ("PARAMETER", "MESSAGE"):
            name, i = self._word(i, _LETTERS + _DIGITS + "_" if keyword == "PARAMETER" else _LETTERS)
            if i >= len(text) or text[i] not in " \t":
                if i >= len(text) or text[i] in "\r\n":
                    return self._skip(i, line, f"{keyword} {name} has no value")
                return self._skip(i, line, f"{keyword}: invalid character in {name + text[i]!r}")
            i += 1
        return self._value(i, line, keyword, name)

    def _value(self, i: int, line: int, keyword: str, name: str) -> tuple[int, int]:
        """Collect the value from `i`; returns where the parser goes on and on which line."""
        text, start_line = self.text, line
        kept: list[str] = []
        first = last = -1  # indexes in `kept` of the first and last character that is not space, tab, CR or LF
        while i < len(text):
            plain = _PLAIN.match(text, i)
            if plain:  # printable ASCII, spaces and tabs: the common case, taken a run at a time
                chunk = plain.group()
                body = chunk.strip(" \t")
                if body:
                    if first < 0:
                        first = len(kept) + chunk.index(body[0])
                    last = len(kept) + len(chunk.rstrip(" \t")) - 1
                kept.extend(chunk)
                i = plain.end()
                continue
            char = text[i]
            if char in "\r\n":
                value = _complete(kept, first, last)
                if value is not None:
                    break
                line += 0 if char == "\r" and text.startswith("\r\n", i) else 1
                kept.append(char)
            elif char in " \t":
                kept.append(char)
            elif _printable(char):
                if first < 0:
                    first = len(kept)
                last = len(kept)
                kept.append(char)
            else:
                self.dropped.setdefault(line, []).append(char)
            i += 1
        value = _complete(kept, first, last)
        if value is None:
            self.problems.append(Problem(start_line, "unterminated quote: the value runs to the end of the file"))
            return len(text), line
        quoted = first >= 0 and kept[first] == '"'
        self.instructions.append(Instruction(keyword, value, name, start_line, quoted=quoted))
        return i, line


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PLAIN = re.compile(r"[\t -~]+")
_DIGITS = "0123456789"


def _complete(kept: list[str], first: int, last: int) -> str | None:
    """ollama's unquote(strings.TrimSpace(value so far)): the value, or None while a quote is open."""
    if first < 0:
        return ""
    if kept[first] != '"':
        return "".join(kept[first : last + 1])
    if kept[first : first + 3] == ['"', '"', '"']:
        closed = last - first + 1 >= 6 and kept[last - 2 : last + 1] == ['"', '"', '"']
        return "".join(kept[first + 3 : last - 2]) if closed else None
    return "".join(kept[first + 1 : last]) if last > first and kept[last] == '"' else None


def _printable(char: str) -> bool:
    """Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return char == " " or unicodedata.category(char)[0] in "LMNPS"


def _char_name(char: str) -> str:
    return f"U+{ord(char):04X} ({unicodedata.name(char, 'control').lower()})"


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
    """Read and check a Modelfile; a problem ollama refuses the file for is a UserError naming the first one."""
    modelfile, problems = _checked(read_modelfile(path))
    errors = [problem for problem in problems if problem.fatal]
    if errors:
        more = f" (and {len(errors) - 1} more; see granite-gguf modelfile --check)" if len(errors) > 1 else ""
        raise UserError(f"{path}:{errors[0].line}: {errors[0].message}{more}")
    return modelfile


def _checked(text: str) -> tuple[Modelfile, list[Problem]]:
    modelfile, problems = parse_modelfile(text)
    first_line: dict[tuple[str, str], int] = {}
    for ins in modelfile.instructions:
        problem = _instruction_problem(ins)
        key = (ins.keyword, ins.name)
        if problem is None and _single_valued(ins):
            if key in first_line:
                problem = (f"{_label(ins)} repeats line {first_line[key]}; " + (
                    _TWO_FROMS if ins.keyword == "FROM" else "ollama keeps only the last one"), False)
            first_line.setdefault(key, ins.line)
        if problem:
            problems.append(Problem(ins.line, *problem))
    if not modelfile.values("FROM"):
        problems.append(Problem(1, "no FROM line: a Modelfile must name its model"))
    return modelfile, sorted(problems, key=lambda problem: problem.line)


def _instruction_problem(ins: Instruction) -> tuple[str, bool] | None:
    """(message, ollama refuses the file) for one instruction, as ollama fb30760 reads it; None if all is well."""
    if ins.keyword not in INSTRUCTIONS + NEWER_INSTRUCTIONS:
        return f"unknown instruction {ins.keyword!r}; expected one of {', '.join(INSTRUCTIONS)}", True
    if not ins.value and ins.keyword in ("FROM", "ADAPTER", "DRAFT"):
        return f"{_label(ins)} has no value", True
    if ins.keyword == "REQUIRES" and not _SEMVER.fullmatch(ins.value.removeprefix("v")):
        return "REQUIRES must be a valid semver (e.g. 0.14.0)", True
    if ins.keyword in NEWER_INSTRUCTIONS:
        return f"{ins.keyword}: only newer ollama servers accept this instruction (0.5.4 refuses the file)", False
    if ins.keyword == "MESSAGE" and ins.name not in MESSAGE_ROLES:
        return f"MESSAGE role {ins.name!r} must be one of {', '.join(MESSAGE_ROLES)}", True
    if ins.keyword == "PARAMETER":
        if ins.name in DEPRECATED_PARAMETERS:
            return f"parameter {ins.name} is deprecated: ollama ignores it", False
        try:
            parameter_value(ins.name, ins.value)
        except ValueError as exc:
            return str(exc), True
    if ins.keyword == "TEMPLATE":
        error = template_error(ins.value)
        if error:
            return f"TEMPLATE: Go's text/template refuses it: {error}", True
    if not ins.value and ins.keyword != "PARAMETER":
        return f"{_label(ins)} has no value" + ("" if ins.keyword in ("LICENSE", "MESSAGE") else ": ollama stores nothing"), False
    if not ins.quoted and len(ins.value) > 1 and ins.value[0] == ins.value[-1] == "'":
        return f"single quotes are not quotes in a Modelfile: the value is {ins.value} with its quotes", False
    return None


# golang.org/x/mod/semver after the "v" ollama adds: vMAJOR[.MINOR[.PATCH[-PRERELEASE][+BUILD]]]
_SEMVER = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?)?)?")


def _single_valued(ins: Instruction) -> bool:
    """LICENSE, MESSAGE, ADAPTER and `stop` add up; any other repeat silently replaces the earlier value."""
    return ins.keyword in ("FROM", "TEMPLATE", "SYSTEM") or (ins.keyword == "PARAMETER" and PARAMETERS[ins.name] is not list)


def _label(ins: Instruction) -> str:
    return f"{ins.keyword} {ins.name}".strip()


def _quote(value: str, force: bool = False) -> str:
    """The shortest form the parser reads back as `value` (ollama's rule: quote only what needs it)."""
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
    facts = ModelFacts.from_summary(load(gguf_path, check=False).summary)
    relative = Path(os.path.relpath(gguf_path.resolve(), modelfile_path.resolve().parent)).as_posix()
    return embedding_modelfile(facts, relative if relative.startswith("../") else f"./{relative}").render()
