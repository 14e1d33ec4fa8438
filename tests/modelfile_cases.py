"""Modelfiles for the differential against the real ollama (tests/test_modelfile_differential.py): ollama's own
parser_test.go cases (fb30760) re-expressed with a FROM that names a real GGUF, and edge cases of this project.
The expected result of each is not written here: the real ollama decides. Only the cases where ollama 0.5.4 (the
binary that runs here) and ollama fb30760 (whose reading granite-gguf follows) are known to differ say so, with
the key of the difference in DIFFERENCES (docs/ollama.md lists them with the reason).

`{m}` stands for the GGUF's path (./model.gguf beside the Modelfile). A case is text (written as UTF-8) or bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Where ollama 0.5.4 reads a Modelfile otherwise than fb30760; granite-gguf follows fb30760.
DIFFERENCES = {
    "newer-instruction": "REQUIRES, RENDERER, PARSER and DRAFT are instructions since 0.5.4: 0.5.4 refuses the file",
    "new-option": "api.Options gained draft_num_predict after 0.5.4: 0.5.4 says unknown parameter",
    "deprecated-option": "fb30760 drops deprecated parameters with a warning; 0.5.4 still stored them",
    "template-function": "fb30760's templates know currentDate, yesterdayDate and toTypeScriptType; 0.5.4 only json",
    "round-trip": "0.5.4's client re-serializes the Modelfile (parser.Command.String) and its server parses that "
                  "again; a value that starts with a quote but was not quoted that way no longer parses",
    "layer-order": "0.5.4 stores the text layers in Modelfile order; fb30760 (and granite-gguf) template, system, license",
    "empty-text": "0.5.4 stores an empty TEMPLATE or SYSTEM as an empty layer; fb30760 stores none",
}


@dataclass(frozen=True)
class Case:
    name: str
    text: str | bytes
    difference: str = ""  # a DIFFERENCES key: 0.5.4 and fb30760 read this file differently
    accepts_054: bool | None = None  # with a difference: whether 0.5.4 takes the file (what the test observes)


LLAMA3_TEMPLATE = ('{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}'
                   '{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}'
                   '<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>')

PARSER_TEST_CASES = [  # ollama parser/parser_test.go at fb30760, test by test
    Case("file", f'\nFROM {{m}}\nLICENSE MIT\nPARAMETER num_ctx 64\nTEMPLATE """{LLAMA3_TEMPLATE}"""    \n',
         "layer-order", accepts_054=True),
    Case("trim-space", f'\nFROM {{m}}\nLICENSE "MIT       "\nPARAMETER num_ctx        64\nPARAMETER num_batch    64\n'
                       f'TEMPLATE """   {LLAMA3_TEMPLATE}   """    \n', "layer-order", accepts_054=True),
    Case("from-quoted", 'FROM "{m}"\nPARAMETER num_ctx 8'),
    Case("from-spaces", "FROM     {m}    "),
    Case("from-missing", ""),
    Case("from-missing-after-parameter", "PARAMETER num_ctx 8"),
    Case("parameter-before-from", "PARAMETER num_ctx 8\nFROM {m}"),
    Case("parameter-missing-value", "\nFROM {m}\nPARAMETER num_ctx\n"),
    Case("bad-command", "\nFROM {m}\nBADCOMMAND param1 value1\n"),
    Case("renderer", "\nFROM {m}\nRENDERER renderer1\n", "newer-instruction", accepts_054=False),
    Case("parser", "\nFROM {m}\nPARSER parser1\n", "newer-instruction", accepts_054=False),
    Case("message-system", "\nFROM {m}\nMESSAGE system You are a file parser. Always parse things.\n"),
    Case("message-at-eof", "\nFROM {m}\nMESSAGE system You are a file parser. Always parse things."),
    Case("messages", "\nFROM {m}\nMESSAGE system You are a file parser.\nMESSAGE user Hey there!\n"
                     "MESSAGE assistant Hello, I want to parse all the things!\n"),
    Case("message-multiline", '\nFROM {m}\nMESSAGE system """\nYou are a multiline file parser.\n"""\n\t\t\t'),
    Case("message-bad-role", "\nFROM {m}\nMESSAGE badguy I'm a bad guy!\n"),
    Case("message-missing-value", "\nFROM {m}\nMESSAGE system\n"),
    Case("message-missing-value-at-eof", "\nFROM {m}\nMESSAGE system"),
    Case("quoted-multiline", '\nFROM {m}\nSYSTEM """\nThis is a\nmultiline system.\n"""\n\t\t\t'),
    Case("quoted-multiline-closed-on-text", '\nFROM {m}\nSYSTEM """\nThis is a\nmultiline system."""\n'),
    Case("quoted-one-line", '\nFROM {m}\nSYSTEM """This is a multiline system."""\n'),
    Case("quoted-unclosed-triple", '\nFROM {m}\nSYSTEM """This is a multiline system.""\n'),
    Case("quoted-unclosed-single", '\nFROM {m}\nSYSTEM "\n\t\t\t'),
    Case("quoted-inner-quotes", '\nFROM {m}\nSYSTEM """\nThis is a multiline system with "quotes".\n"""\n'),
    Case("quoted-empty-triple", '\nFROM {m}\nSYSTEM """"""\n', "empty-text", accepts_054=True),
    Case("quoted-empty", '\nFROM {m}\nSYSTEM ""\n', "empty-text", accepts_054=True),
    Case("quoted-apostrophe", "\nFROM {m}\nSYSTEM \"'\"\n"),
    Case("quoted-mixed-quotes", '\nFROM {m}\nSYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""\n'),
    Case("template-at-eof", '\nFROM {m}\nTEMPLATE """\n{{ .Prompt }}\n"""'),
    Case("parameters", "FROM {m}\n" + "".join(f"PARAMETER {p}\n" for p in (
        "num_ctx 1", "num_batch 1", "num_gpu 1", "main_gpu 1", "use_mmap true", "num_thread 1", "num_keep 1", "seed 1",
        "num_predict 1", "top_k 1", "top_p 1.0", "min_p 0.05", "typical_p 1.0", "repeat_last_n 1", "temperature 1.0",
        "repeat_penalty 1.0", "presence_penalty 1.0", "frequency_penalty 1.0"))),
    Case("parameter-numa", "FROM {m}\nPARAMETER numa true\n"),
    Case("parameter-num-gqa", "FROM {m}\nPARAMETER num_gqa 1\n"),
    Case("parameter-penalize-newline", "FROM {m}\nPARAMETER penalize_newline true\n", "deprecated-option", accepts_054=True),
    Case("stops", "FROM {m}\nPARAMETER stop ### User:\nPARAMETER stop ### User: \nPARAMETER stop \"### User: \"\n"
                  'PARAMETER stop """### User:\n"""\nPARAMETER stop <|endoftext|>\nPARAMETER stop </s>\n'),
    Case("comments", "# comment\nFROM {m}\n# another comment\nPARAMETER num_ctx 8 \n   # indented\n"),
    Case("utf16-le", b"\xff\xfe" + "FROM {m}\nPARAMETER num_ctx 1\nSYSTEM You are a utf16 file.\n".encode("utf-16-le")),
    Case("utf16-be", b"\xfe\xff" + "FROM {m}\nPARAMETER num_ctx 4096\nSYSTEM You are a utf16 file.\n".encode("utf-16-be")),
    Case("multibyte", "FROM {m}\n\tSYSTEM 你好👋"),
]

EDGE_CASES = [
    Case("float32-digits", "FROM {m}\nPARAMETER temperature 0.1234567891\nPARAMETER top_p 1e-07\nPARAMETER min_p 1e-6\n"
                           "PARAMETER typical_p 1\nPARAMETER repeat_penalty 1.5e-6\nPARAMETER presence_penalty -0\n"
                           "PARAMETER frequency_penalty 1e20\n"),
    Case("float32-boundaries", "FROM {m}\nPARAMETER temperature 3.4028235e38\nPARAMETER top_p 1e-45\nPARAMETER min_p 1e-50\n"
                               "PARAMETER typical_p 9.999999e-7\nPARAMETER repeat_penalty 1e21\n"),
    Case("float-underscore", "FROM {m}\nPARAMETER temperature 1_0.5\n"),
    Case("float-hex", "FROM {m}\nPARAMETER temperature 0x1p-2\n"),
    Case("float-inf", "FROM {m}\nPARAMETER temperature inf\n"),
    Case("float-nan", "FROM {m}\nPARAMETER temperature NaN\n"),
    Case("float-too-large", "FROM {m}\nPARAMETER temperature 1e39\n"),
    Case("float-for-int", "FROM {m}\nPARAMETER top_k 1.5\n"),
    Case("ints", "FROM {m}\nPARAMETER num_ctx +512\nPARAMETER seed -1\nPARAMETER num_predict 0\n"),
    Case("int-underscore", "FROM {m}\nPARAMETER num_ctx 8_192\n"),
    Case("int-too-large", "FROM {m}\nPARAMETER seed 9223372036854775808\n"),
    Case("bools", "FROM {m}\nPARAMETER use_mmap T\n"),
    Case("bool-yes", "FROM {m}\nPARAMETER use_mmap yes\n"),
    Case("crlf-file", "FROM {m}\r\nPARAMETER num_ctx 64\r\nSYSTEM be brief\r\nLICENSE \"\"\"two\r\nlines\"\"\"\r\n"),
    Case("crlf-in-quotes", 'FROM {m}\nSYSTEM """a\r\nb\r\n"""\n'),
    Case("cr-line-ends", "FROM {m}\rPARAMETER num_ctx 64\rSYSTEM hi\r"),
    Case("no-break-space", "FROM {m}\nSYSTEM a\u00a0b\u00a0\n"),
    Case("zero-width-joiner", "FROM {m}\nSYSTEM \U0001f469\u200d\U0001f4bb and \u200bzero width\n"),
    Case("line-separator", 'FROM {m}\nSYSTEM """one\u2028two"""\n'),
    Case("no-break-space-before-from", "\u00a0FROM {m}\n"),
    Case("tabs", "FROM\t{m}\nPARAMETER\tnum_ctx\t8\nSYSTEM \tleading tab\t\n"),
    Case("template-unclosed-action", 'FROM {m}\nTEMPLATE "{{ .Prompt"\n'),
    Case("template-undefined-function", 'FROM {m}\nTEMPLATE "{{ foo .Prompt }}"\n'),
    Case("template-unclosed-if", 'FROM {m}\nTEMPLATE "{{ if .System }}{{ .System }}"\n'),
    Case("template-stray-end", 'FROM {m}\nTEMPLATE "{{ .Prompt }}{{ end }}"\n'),
    Case("template-current-date", 'FROM {m}\nTEMPLATE "{{ currentDate }} {{ .Prompt }}"\n',
         "template-function", accepts_054=False),
    Case("template-range", 'FROM {m}\nTEMPLATE """{{- range .Messages }}{{ .Role }}: {{ .Content }}\n'
                           '{{ end }}{{/* a comment */}}{{ "}}" }}"""\n'),
    Case("template-json", 'FROM {m}\nTEMPLATE "{{ json .Prompt }}"\n'),
    Case("repeated-parameter", "FROM {m}\nPARAMETER num_ctx 8\nPARAMETER num_ctx 16\n"),
    Case("repeated-system", "FROM {m}\nSYSTEM first\nSYSTEM second\n"),
    Case("two-licenses", "FROM {m}\nLICENSE one\nLICENSE two\n"),
    Case("license-before-template", 'FROM {m}\nLICENSE mit\nSYSTEM sys\nTEMPLATE "{{ .Prompt }}"\n',
         "layer-order", accepts_054=True),
    Case("deprecated-mirostat", "FROM {m}\nPARAMETER mirostat 1\nPARAMETER num_ctx 8\n", "deprecated-option",
         accepts_054=True),
    Case("keyword-case", "from {m}\nParameter num_ctx 8\nsYsTeM hi\n"),
    Case("parameter-name-case", "FROM {m}\nPARAMETER NUM_CTX 8\n"),
    Case("hash-after-value", "FROM {m}\nPARAMETER num_ctx 8 # comment\n"),
    Case("html-characters", 'FROM {m}\nPARAMETER stop "<a&b>"\nSYSTEM <b> & </b>\n'),
    Case("text-after-quote", 'FROM {m}\nSYSTEM "a" b\n'),
    Case("quote-inside-value", 'FROM {m}\nSYSTEM a "b" c\n'),
    Case("value-starting-with-quote", 'FROM {m}\nSYSTEM """"quoted" word"""\n', "round-trip", accepts_054=False),
    Case("single-quotes", "FROM {m}\nPARAMETER stop '<eos>'\n"),
    Case("requires", "FROM {m}\nREQUIRES 0.14.0\n", "newer-instruction", accepts_054=False),
    Case("requires-bad", "FROM {m}\nREQUIRES fourteen\n"),
    Case("draft-num-predict", "FROM {m}\nPARAMETER draft_num_predict 4\n", "new-option", accepts_054=False),
    Case("only-comments", "# nothing\n# here\n"),
    Case("from-no-value", "FROM\nPARAMETER num_ctx 8\n"),
    Case("parameter-two-spaces", "FROM {m}\nPARAMETER  num_ctx 8\n"),
    Case("keyword-colon", "FROM:{m}\n"),
    Case("unicode-stop", "FROM {m}\nPARAMETER stop 停\nPARAMETER stop \"\"\"a\nb\"\"\"\n"),
    Case("pointer-options", "FROM {m}\nPARAMETER main_gpu 0\nPARAMETER use_mmap false\nPARAMETER num_gpu 0\n"),
    Case("long-system", 'FROM {m}\nSYSTEM """' + "".join(f"line {i}\n" for i in range(400)) + '"""\n'),
    Case("message-quoted", 'FROM {m}\nMESSAGE user "hello there"\nMESSAGE assistant """multi\nline"""\n'),
]

CASES = PARSER_TEST_CASES + EDGE_CASES
