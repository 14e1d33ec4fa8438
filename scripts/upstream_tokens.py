"""Does llama.cpp's own converter tokenize the real Gemma 3 vocabulary as HF does? (README, "why not").

    .venv/bin/python scripts/upstream_tokens.py LLAMA_CPP/convert_hf_to_gguf.py [--workdir DIR]

Builds the real-vocabulary checkpoint (granite_gguf.dev.real_vocab), converts it with upstream's
convert_hf_to_gguf.py (its vendored gguf-py), tries to load the file, then tokenizes the probe set,
the whitespace texts and special tokens written in text with llama.cpp: first with upstream's
epsilon key overridden at load, then with its `add_eos_token` overridden too, against HF tokenizers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gguf import Keys

from granite_gguf.bindings.embedder import clean_text
from granite_gguf.dev.real_vocab import build_real_vocab_checkpoint
from granite_gguf.gguf_file import load
from granite_gguf.probes import probe_texts, special_token_texts, whitespace_texts

EPSILON = "modern-bert.attention.layer_norm_epsilon"


def main(argv: list[str] | None = None) -> int:
    import llama_cpp
    from tokenizers import Tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upstream", type=Path, help="convert_hf_to_gguf.py (its gguf-py/ beside it)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.mkdtemp(prefix="upstream-")))
    args = parser.parse_args(argv)
    checkpoint = build_real_vocab_checkpoint(args.workdir / "real-gemma3")
    out = args.workdir / "upstream-f32.gguf"
    env = {**os.environ, "PYTHONPATH": str(args.upstream.parent / "gguf-py")}
    subprocess.run([sys.executable, str(args.upstream), str(checkpoint), "--outfile", str(out), "--outtype", "f32"],
                   env=env, check=True, capture_output=True)
    meta = load(out, check=False, whole=True).header.metadata
    print(f"upstream wrote pre={meta[Keys.Tokenizer.PRE]}, {len(meta[Keys.Tokenizer.MERGES])} merges, "
          f"add_eos_token={meta[Keys.Tokenizer.ADD_EOS]}, epsilon key present: {EPSILON in meta}")
    try:
        llama_cpp.Llama(model_path=str(out), embedding=True, verbose=False).close()
        print("loads as written")
    except ValueError as exc:
        print(f"does not load as written: {exc}")
    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    added = [t["content"] for t in tokenizer["added_tokens"]]
    texts = [*probe_texts(), *whitespace_texts(), *special_token_texts(added[::25])]
    expected = [e.ids for e in Tokenizer.from_file(str(checkpoint / "tokenizer.json")).encode_batch(texts)]
    settings: list[dict[str, bool | int | float | str]] = [{EPSILON: 1e-5}, {EPSILON: 1e-5, Keys.Tokenizer.ADD_EOS: False}]
    for overrides in settings:
        model = llama_cpp.Llama(model_path=str(out), embedding=True, verbose=False, n_ctx=64, kv_overrides=overrides)
        ids = [model.tokenize(clean_text(text), add_bos=True, special=True) for text in texts]
        model.close()
        extra_eos = sum(mine[:-1] == theirs and mine[-1:] == [meta[Keys.Tokenizer.EOS_ID]]
                        for mine, theirs in zip(ids, expected))
        mismatches = sum(mine != theirs for mine, theirs in zip(ids, expected))
        print(f"overrides {sorted(overrides)}: {mismatches} of {len(texts)} texts differ from HF "
              f"({extra_eos} by one trailing EOS)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
