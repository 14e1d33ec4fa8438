"""Modelfiles: ollama's grammar (docs/architecture.md, "ollama") on hand-written files, the generator, the shipped files, `modelfile`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from granite_gguf import __version__
from granite_gguf.errors import UserError
from granite_gguf.modelfiles.granite_r2 import FOLDER, shipped_modelfiles
from granite_gguf.modelfiles.modelfile import (
    DEPRECATED_PARAMETERS,
    Instruction,
    ModelFacts,
    Modelfile,
    check_modelfile,
    decode_modelfile,
    embedding_modelfile,
    generate_modelfile,
    parse_modelfile,
    read_modelfile,
)
from granite_gguf.models import DEFAULT_SET, MODELS, by_name
from tests.helpers import Workspace, run_cli

VALID = '\ufeff' + """# provenance comment
   # an indented comment is a comment too
from ./model.gguf
Parameter num_ctx 8192
PARAMETER\tnum_batch\t8192
PARAMETER use_mmap false
PARAMETER temperature 0.7
PARAMETER top_p 1e-1
PARAMETER seed -1
PARAMETER stop "<|end|>"
PARAMETER stop #not a comment here
SYSTEM You are # a value, not a comment
TEMPLATE \"\"\"{{ .Prompt }}
# inside quotes this line is text
\"\"\"
MESSAGE user "hello there"
LICENSE \"\"\"apache-2.0
with "quotes" inside\"\"\"
LICENSE "second license"
""".replace("\n", "\r\n")


def test_valid_modelfile_parses_as_ollama_reads_it() -> None:
    assert check_modelfile(VALID) == []
    modelfile, _ = parse_modelfile(VALID)
    assert [(ins.keyword, ins.line) for ins in modelfile.instructions][:2] == [("FROM", 3), ("PARAMETER", 4)]
    assert modelfile.values("FROM") == ["./model.gguf"]
    assert modelfile.values("SYSTEM") == ["You are # a value, not a comment"]
    # ollama keeps line breaks inside quotes as they are: CRLF here
    assert modelfile.values("TEMPLATE") == ["{{ .Prompt }}\r\n# inside quotes this line is text\r\n"]
    assert modelfile.values("LICENSE") == ['apache-2.0\r\nwith "quotes" inside', "second license"]
    assert modelfile.values("MESSAGE") == ["hello there"]
    assert modelfile.parameters() == {
        "num_batch": 8192, "num_ctx": 8192, "seed": -1, "stop": ["<|end|>", "#not a comment here"],
        "temperature": 0.7, "top_p": 0.1, "use_mmap": False,
    }


# Each case: a Modelfile with one planted error, the line it is on, and words the problem must say.
INVALID = {
    "upper-case parameter name": ("FROM x.gguf\nPARAMETER NUM_CTX 8192\n", 2, "lower-case: num_ctx"),
    "mixed-case parameter name": ("FROM x.gguf\n\nPARAMETER Num_Batch 8\n", 3, "lower-case: num_batch"),
    "unknown parameter": ("FROM x.gguf\nPARAMETER num_ctxx 8192\n", 2, "unknown parameter 'num_ctxx'"),
    "missing FROM": ("PARAMETER num_ctx 8192\n", 1, "no FROM line"),
    "unterminated quote": ("FROM x.gguf\nSYSTEM ok\nSYSTEM \"open\nPARAMETER num_ctx 1\n", 3, "unterminated quote"),
    "unterminated triple quote": ("FROM x.gguf\nLICENSE \"\"\"text\"\"\n", 2, "unterminated quote"),
    "text after a closing quote": ("FROM x.gguf\nSYSTEM \"a\" b\n", 2, "unterminated quote"),
    "# after an int": ("FROM x.gguf\nPARAMETER num_ctx 8192 # comment\n", 2, "'#' starts a comment only"),
    "# after a float": ("# c\nFROM x.gguf\nPARAMETER temperature 0.5 #warm\n", 3, "'#' starts a comment only"),
    "bad bool": ("FROM x.gguf\nPARAMETER use_mmap yes\n", 2, "invalid bool value 'yes'"),
    "int with underscore": ("FROM x.gguf\nPARAMETER num_ctx 8_192\n", 2, "invalid int value"),
    "float out of float32 range": ("FROM x.gguf\nPARAMETER top_p 1e39\n", 2, "invalid float value"),
    "single-quoted number": ("FROM x.gguf\nPARAMETER num_ctx '8192'\n", 2, "single quotes are not quotes"),
    "single-quoted string": ("FROM x.gguf\nPARAMETER stop '<eos>'\n", 2, "single quotes are not quotes"),
    "unknown instruction": ("FROM x.gguf\nQUANTIZE q8_0\n", 2, "unknown instruction 'QUANTIZE'"),
    "parameter without keyword": ("FROM x.gguf\nnum_ctx 8192\n", 2, "is not an instruction"),
    "bad parameter name character": ("FROM x.gguf\nPARAMETER num-ctx 8\n", 2, "invalid character"),
    "FROM without value": ("FROM\nFROM x.gguf\n", 1, "FROM has no value"),
    "parameter without value": ("FROM x.gguf\nPARAMETER num_ctx\n", 2, "PARAMETER num_ctx has no value"),
    "message role": ("FROM x.gguf\nMESSAGE bot hi\n", 2, "MESSAGE role 'bot'"),
    "repeated parameter": ("FROM x.gguf\nPARAMETER num_ctx 1\nPARAMETER num_ctx 2\n", 3, "repeats line 2"),
    "REQUIRES": ("FROM x.gguf\nREQUIRES 0.12.0\n", 2, "only newer ollama servers"),
    "RENDERER": ("FROM x.gguf\nrenderer qwen3\n", 2, "only newer ollama servers"),
    "PARSER": ("FROM x.gguf\nPARSER qwen3\n", 2, "only newer ollama servers"),
    "DRAFT": ("FROM x.gguf\nDRAFT ./small.gguf\n", 2, "only newer ollama servers"),
}


@pytest.mark.parametrize("case", INVALID)
def test_planted_error_is_flagged_on_its_line(case: str) -> None:
    text, line, words = INVALID[case]
    problems = check_modelfile(text)
    assert [(p.line, words in p.message) for p in problems] == [(line, True)], problems


def test_checker_reports_every_problem_in_one_pass() -> None:
    text = "PARAMETER NUM_CTX 1\nPARAMETER num_batch 8 # x\nPARAMETER stop \"\"\"never closed\n"
    assert [p.line for p in check_modelfile(text)] == [1, 1, 2, 3]


@pytest.mark.parametrize("value", ["plain", " leading space", "two\nlines", '"starts with a quote', 'ends with"', 'a "b" c'])
def test_rendered_values_read_back_unchanged(value: str) -> None:
    modelfile = Modelfile([Instruction("FROM", "x.gguf"), Instruction("SYSTEM", value), Instruction("LICENSE", value)])
    parsed, problems = parse_modelfile(modelfile.render())
    assert problems == []
    assert [(i.keyword, i.value) for i in parsed.instructions] == [(i.keyword, i.value) for i in modelfile.instructions]


# ollama's parser/parser_test.go at fb30760: TestParseFileUTF16ParseFile (a BOM, then UTF-16 LE or BE) and
# TestParseMultiByte (UTF-8; UTF-16 LE and BE with BOM); plus UTF-8 with a BOM, which the same decoder
# (unicode.BOMOverride) drops. The expected commands are the ones those tests expect.
UTF16_FILE = "FROM bob\nPARAMETER param1 1\nPARAMETER param2 4096\nSYSTEM You are a utf16 file.\n"
UTF16_COMMANDS = [("FROM", "", "bob"), ("PARAMETER", "param1", "1"), ("PARAMETER", "param2", "4096"),
                  ("SYSTEM", "", "You are a utf16 file.")]
MULTIBYTE_FILE = "FROM test\n\tSYSTEM 你好👋"
MULTIBYTE_COMMANDS = [("FROM", "", "test"), ("SYSTEM", "", "你好👋")]
ENCODINGS = {"utf-16 le with bom": lambda text: b"\xff\xfe" + text.encode("utf-16-le"),
             "utf-16 be with bom": lambda text: b"\xfe\xff" + text.encode("utf-16-be"),
             "utf-8 with bom": lambda text: b"\xef\xbb\xbf" + text.encode("utf-8"),
             "utf-8": lambda text: text.encode("utf-8")}


def commands(text: str) -> list[tuple[str, str, str]]:
    modelfile, problems = parse_modelfile(text)
    assert problems == []
    return [(ins.keyword, ins.name, ins.value) for ins in modelfile.instructions]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("text, expected", [(UTF16_FILE, UTF16_COMMANDS), (MULTIBYTE_FILE, MULTIBYTE_COMMANDS)])
def test_encodings_are_read_as_ollama_reads_them(encoding: str, text: str, expected: list[tuple[str, str, str]]) -> None:
    assert commands(decode_modelfile(ENCODINGS[encoding](text))) == expected


def test_powershell_modelfile_is_checked_and_installed_like_any_other(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """PowerShell 5's `Set-Content`/`>` write UTF-16 LE with a BOM and CRLF line ends."""
    path = tmp_path / "Modelfile"
    path.write_bytes(ENCODINGS["utf-16 le with bom"]("FROM ./m.gguf\r\nPARAMETER num_ctx 8192\r\n"))
    assert run_cli("modelfile", "--check", str(path)) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"
    assert read_modelfile(path) == "FROM ./m.gguf\r\nPARAMETER num_ctx 8192\r\n"


# TestParseFileQuoted: inside "…" and """…""" single quotes are text, so nothing may be reported about them.
@pytest.mark.parametrize("line, value", [('SYSTEM "\'"', "'"),
                                         ('SYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""', '\'\'"\'""\'""\'"\'\'\'\'\'""\'""\''),
                                         ("LICENSE \"'MIT'\"", "'MIT'"), ("PARAMETER stop \"'x'\"", "'x'")])
def test_single_quotes_inside_double_quotes_are_text(line: str, value: str) -> None:
    text = f"FROM foo\n{line}\n"
    assert check_modelfile(text) == []
    assert parse_modelfile(text)[0].instructions[1].value == value


def test_two_from_files_are_both_kept_by_ollama() -> None:
    """TestCreateRequestFiles: `FROM a.gguf` + `FROM b.gguf` gives Files {a, b}; the message must not say 'last one'."""
    problems = check_modelfile("FROM ./a.gguf\nFROM ./b.gguf\n")
    assert [problem.line for problem in problems] == [2]
    assert "ollama keeps both" in problems[0].message and "only the last" not in problems[0].message


@pytest.mark.parametrize("name", DEPRECATED_PARAMETERS)
def test_deprecated_parameters_are_reported_as_deprecated(name: str) -> None:
    """parser.go CreateRequest: a deprecated parameter parses (TestParseFileParameters: penalize_newline true) and
    is then dropped with "warning: parameter NAME is deprecated"; it is not an unknown one."""
    text = f"FROM foo\nPARAMETER {name} true\nPARAMETER num_ctx 8\n"
    problems = check_modelfile(text)
    assert [(problem.line, problem.message) for problem in problems] == [
        (2, f"parameter {name} is deprecated: ollama ignores it")]
    assert parse_modelfile(text)[0].parameters() == {"num_ctx": 8}


def test_value_with_three_quotes_cannot_be_written() -> None:
    with pytest.raises(UserError, match="three double quotes"):
        Modelfile([Instruction("LICENSE", 'say """hi"""')]).render()


def test_shipped_modelfiles_are_the_generators_output() -> None:
    expected = shipped_modelfiles()
    assert sorted(expected) == sorted(f"{m.name}-{t.label}.Modelfile" for m in MODELS for t in DEFAULT_SET)
    assert sorted(path.name for path in FOLDER.iterdir()) == sorted(expected)
    for name, text in expected.items():
        assert (FOLDER / name).read_text(encoding="utf-8") == text, f"regenerate: python -m granite_gguf.modelfiles.granite_r2 ({name})"
        assert check_modelfile(text) == []
        modelfile, _ = parse_modelfile(text)
        model = by_name(name.rsplit("-", 1)[0])
        assert model is not None, name
        assert modelfile.values("FROM") == [f"./{name.removesuffix('.Modelfile')}.gguf"]
        assert modelfile.parameters() == {"num_batch": model.context_length, "num_ctx": model.context_length}
        assert modelfile.values("LICENSE") == ["apache-2.0"] and 'LICENSE """apache-2.0"""' in text


@pytest.mark.parametrize("family, context", [("tiny-gemma3", 32768), ("tiny-gpt2", 8192)])
def test_generated_from_a_gguf(workspace: Workspace, tmp_path: Path, family: str, context: int) -> None:
    gguf = workspace.gguf(family, "f16")
    text = generate_modelfile(gguf, tmp_path / "Modelfile")
    assert check_modelfile(text) == []
    modelfile, _ = parse_modelfile(text)
    source = modelfile.values("FROM")[0]
    assert (tmp_path / source).resolve() == gguf.resolve()
    assert modelfile.parameters() == {"num_batch": context, "num_ctx": context}
    assert modelfile.values("LICENSE") == ["apache-2.0"]
    assert [line for line in text.splitlines() if line.startswith("#")][:4] == [
        f"# model: {family}", "# file type: f16", "# pooling: CLS", f"# converter: granite-gguf {__version__}"]
    assert text.splitlines()[4].startswith("# num_batch = num_ctx")
    beside = generate_modelfile(gguf, gguf.with_name("Modelfile"))
    assert parse_modelfile(beside)[0].values("FROM") == [f"./{gguf.name}"]


def test_facts_alone_and_gguf_give_the_same_shape() -> None:
    facts = ModelFacts("m", 512, "q8_0", None, pooling="MEAN", converter="granite-gguf 9")
    text = embedding_modelfile(facts).render()
    assert "LICENSE" not in text and "FROM ./m-q8_0.gguf\n" in text and "# pooling: MEAN" in text
    assert check_modelfile(text) == []


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "Modelfile"
    bad.write_text("FROM x.gguf\nPARAMETER num_ctx 8192 # comment\nPARAMETER Seed 1\n")
    assert run_cli("modelfile", "--check", str(bad)) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[0] for line in out] == [f"{bad}:2", f"{bad}:3"]
    bad.write_text("FROM x.gguf\n")
    assert run_cli("modelfile", "--check", str(bad)) == 0
    assert capsys.readouterr().out == f"{bad}: ok\n"


def test_cli_writes_a_modelfile(workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    gguf = workspace.gguf("tiny-gemma3", "f16")
    output = tmp_path / "Modelfile"
    assert run_cli("modelfile", str(gguf), "-o", str(output)) == 0
    assert output.read_text() == generate_modelfile(gguf, output)
    assert [p.name for p in tmp_path.iterdir()] == ["Modelfile"]
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert run_cli("modelfile", str(gguf)) == 0
    assert capsys.readouterr().out == output.read_text()


@pytest.mark.parametrize("argv", [["modelfile"], ["modelfile", "x.gguf", "--check", "Modelfile"],
                                  ["modelfile", "--check", "/no/such/Modelfile"], ["modelfile", "/no/such.gguf"]])
def test_cli_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert run_cli(*argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")


def test_an_unclosed_triple_quote_is_parsed_in_linear_time() -> None:
    """Issue 21 item 13: 400k lines after an unclosed \"\"\" took 33 s (the whole value re-trimmed at every line break).
    Eight times the lines must take about eight times as long, not sixty-four (best of three, so load does not decide)."""
    def seconds(lines: int) -> float:
        text = 'FROM x.gguf\nSYSTEM """never closed\n' + "a line of text\n" * lines
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            problems = check_modelfile(text)
            best = min(best, time.perf_counter() - start)
        assert [(p.line, "unterminated quote" in p.message) for p in problems] == [(2, True)]
        return best

    small, large = seconds(10_000), seconds(80_000)
    assert large < 24 * small, f"{small:.3f} s for 10k lines, {large:.3f} s for 80k"


def test_float_parameters_are_stored_as_ollama_stores_them() -> None:
    """The params blob ollama 0.5.4 wrote for these lines (float32, printed the Go way): see the differential."""
    from granite_gguf.modelfiles.store import go_json

    text = "FROM x.gguf\nPARAMETER num_ctx 512\nPARAMETER temperature 0.1234567891\nPARAMETER top_p 1e-07\n"
    assert go_json(parse_modelfile(text)[0].parameters()) == b'{"num_ctx":512,"temperature":0.12345679,"top_p":1e-7}\n'


@pytest.mark.parametrize("line, value, dropped", [
    ("SYSTEM a\u00a0b", "ab", "U+00A0 (no-break space)"),
    ("SYSTEM \U0001f469\u200d\U0001f4bb", "\U0001f469\U0001f4bb", "U+200D (zero width joiner)"),
    ('SYSTEM """x\u2028y"""', "xy", "U+2028 (line separator)"),
    ("\u00a0SYSTEM z", "z", "U+00A0 (no-break space)"),
])
def test_characters_go_does_not_print_are_dropped_with_a_warning(line: str, value: str, dropped: str) -> None:
    modelfile, problems = parse_modelfile(f"FROM x.gguf\n{line}\n")
    assert modelfile.values("SYSTEM") == [value]
    assert [(p.line, p.fatal, dropped in p.message) for p in problems] == [(2, False, True)]


@pytest.mark.parametrize("template, words", [("{{ .Prompt", "unclosed action"), ("{{ foo }}", 'function "foo" not defined'),
                                             ("{{ if .System }}x", "unexpected EOF"), ("{{ end }}", "unexpected {{end}}")])
def test_a_template_go_cannot_parse_is_refused(template: str, words: str) -> None:
    problems = check_modelfile(f'FROM x.gguf\nTEMPLATE "{template}"\n')
    assert [(p.line, p.fatal, words in p.message) for p in problems] == [(2, True, True)]
    assert check_modelfile('FROM x.gguf\nTEMPLATE "{{ if .System }}{{ .System }}{{ end }}{{ json .Prompt }}"\n') == []
