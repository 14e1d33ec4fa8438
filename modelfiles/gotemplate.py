"""Whether Go's text/template would parse a TEMPLATE: ollama's create refuses one it cannot (template.Parse).

A subset of text/template's lexer and parser (parse/lex.go, parse/parse.go), enough for the mistakes people make:
unclosed actions, comments and strings, unbalanced parentheses, empty commands, undefined functions, and
if/range/with/define/block/else/end/break/continue out of place. It does not type-check pipelines (neither does Parse).
The functions are text/template's builtins and ollama's template.funcs at fb30760 (0.5.4 had only `json`).
"""

from __future__ import annotations

import re

FUNCTIONS = frozenset({
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf", "println", "urlquery",
    "eq", "ge", "gt", "le", "lt", "ne",  # text/template builtins
    "json", "currentDate", "yesterdayDate", "toTypeScriptType",  # ollama template/template.go funcs
})
_OPENERS = ("if", "range", "with", "define", "block")
_KEYWORDS = frozenset({*_OPENERS, "else", "end", "template", "break", "continue"})
_LITERALS = frozenset({"true", "false", "nil"})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"""\s+|"(\\.|[^"\\\n])*"|`[^`]*`|'(\\.|[^'\\\n])+'|:=|=|\||\(|\)|,|[$.A-Za-z0-9_+-][^\s|(),"`']*""")


def template_error(text: str) -> str | None:
    """Go's reason for refusing `text` (close to its wording), or None when this subset finds nothing."""
    stack: list[str] = []
    position = 0
    while True:
        start = text.find("{{", position)
        if start < 0:
            break
        inner = start + 2
        if text.startswith("- ", inner) or text.startswith("-\t", inner) or text.startswith("-\n", inner):
            inner += 2
        stripped = text[inner:].lstrip()
        if stripped.startswith("/*"):
            comment_start = len(text) - len(stripped)
            close = text.find("*/", comment_start + 2)
            if close < 0:
                return "unclosed comment"
            after = close + 2
            for closing in ("}}", " -}}"):
                if text.startswith(closing, after):
                    position = after + len(closing)
                    break
            else:
                return "comment ends before closing delimiter"
            continue
        end, tokens, error = _action(text, inner)
        if error:
            return error
        error = _check(tokens, stack)
        if error:
            return error
        position = end
    if stack:
        return f"unexpected EOF (an unclosed {{{{{stack[-1]}}}}})"
    return None


def _action(text: str, i: int) -> tuple[int, list[str], str | None]:
    """Tokens of the action starting at `i` up to its `}}`; (end, tokens, error)."""
    tokens: list[str] = []
    depth = 0
    while True:
        if i >= len(text):
            return i, tokens, "unclosed action"
        for closing in ("}}", " -}}", "\t-}}", "\n-}}"):
            if text.startswith(closing, i):
                if depth:
                    return i, tokens, "unclosed left paren"
                return i + len(closing), tokens, None
        match = _TOKEN.match(text, i)
        if match is None:
            char = text[i]
            if char == '"':
                return i, tokens, "unterminated quoted string"
            if char == "`":
                return i, tokens, "unterminated raw quoted string"
            if char == "'":
                return i, tokens, "unterminated character constant"
            return i, tokens, f"unrecognized character in action: {char!r}"
        token = match.group()
        if "}}" in token and not token.startswith(('"', "`", "'")):  # a word runs into the closing delimiter
            token = token[: token.index("}}")].removesuffix(" -")
            if not token:
                i += 1
                continue
            i += len(token)
        else:
            i = match.end()
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
            if depth < 0:
                return i, tokens, "unexpected right paren"
        if not token.isspace():
            tokens.append(token)


def _check(tokens: list[str], stack: list[str]) -> str | None:
    """Block structure and functions of one action's tokens; `stack` holds the open blocks."""
    if not tokens:
        return "missing value for command"
    keyword, rest = tokens[0], tokens[1:]
    if keyword in _OPENERS:
        if not rest:
            return f"missing value for {keyword}"
        if keyword in ("define", "block") and not rest[0].startswith(('"', "`")):
            return f"name of {keyword} must be a string"
        stack.append(keyword)
        return _functions(rest[1:] if keyword in ("define", "block") else rest)
    if keyword == "end":
        if rest:
            return "unexpected token in end"
        if not stack:
            return "unexpected {{end}}"
        stack.pop()
        return None
    if keyword == "else":
        if not stack or stack[-1] not in ("if", "range", "with"):
            return "unexpected {{else}}"
        if rest and rest[0] in ("if", "with"):
            return _functions(rest[1:]) if rest[1:] else f"missing value for {rest[0]}"
        return "unexpected token in else" if rest else None
    if keyword in ("break", "continue"):
        if "range" not in stack:
            return f"{{{{{keyword}}}}} outside {{{{range}}}}"
        return None
    if keyword == "template":
        if not rest or not rest[0].startswith(('"', "`")):
            return "template: name must be a string"
        return _functions(rest[1:])
    if keyword == "nil":
        return "nil is not a command"
    return _functions(tokens)


def _functions(tokens: list[str]) -> str | None:
    """Every bare identifier in a pipeline is a function call: it must be defined."""
    for token in tokens:
        if _WORD.fullmatch(token) and token not in _LITERALS and token not in _KEYWORDS and token not in FUNCTIONS:
            return f'function "{token}" not defined'
    return None
