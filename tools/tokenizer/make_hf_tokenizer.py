#!/usr/bin/python3
"""Converts the npm tiktoken package's o200k_base.json into a Hugging Face tokenizer directory.

    /usr/bin/python3 tools/tokenizer/make_hf_tokenizer.py \
        --tiktoken-json third_party/npm/node_modules/tiktoken/encoders/o200k_base.json \
        --out DIR [--merges-format strings|pairs]

Writes DIR/tokenizer.json (BPE model, byte-level, Split(o200k regex) + ByteLevel(use_regex=false)
pre-tokenizer, the o200k + Phi-4-mini chat specials as added_tokens), DIR/tokenizer_config.json
(added_tokens_decoder) and DIR/added_tokens.json, the file set of a Phi-4-mini checkpoint.

The conversion is the standard tiktoken -> HF one: vocab = bytes_to_unicode(token bytes) -> rank;
for every multi-byte token, in rank order, one merge: the two parts that BPE over the token's own
bytes reaches when only lower ranks may merge (always exactly two for o200k; checked). Used by
tests/engine/bpe_tokenizer_test.cc to check that LoadHfTokenizer matches LoadTiktokenJson.
Standard library only; about 10 s.
"""

import argparse
import base64
import json
import os
import sys
import tempfile

# Phi-4-mini chat/tool specials; tools/tokenizer/encode_reference.mjs has the same list.
PHI4_SPECIALS = {
    "<|endoftext|>": 199999,
    "<|endofprompt|>": 200018,
    "<|assistant|>": 200019,
    "<|end|>": 200020,
    "<|user|>": 200021,
    "<|system|>": 200022,
    "<|tool|>": 200023,
    "<|/tool|>": 200024,
    "<|tool_call|>": 200025,
    "<|/tool_call|>": 200026,
    "<|tool_response|>": 200027,
    "<|tag|>": 200028,
}


def bytes_to_unicode():
    """GPT-2's byte -> printable character map."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) +
          list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def read_ranks(path):
    """Token bytes -> rank from the npm JSON ("! first t0 t1 ..." or "token rank" lines)."""
    with open(path, "r", encoding="utf-8") as f:
        data = json.load(f)
    ranks = {}
    for line in data["bpe_ranks"].split("\n"):
        if not line:
            continue
        fields = line.split(" ")
        if fields[0] == "!":
            first = int(fields[1])
            for i, tok in enumerate(fields[2:]):
                ranks[base64.b64decode(tok, validate=True)] = first + i
        else:
            ranks[base64.b64decode(fields[0], validate=True)] = int(fields[1])
    return data["pat_str"], data.get("special_tokens", {}), ranks


def bpe_parts(ranks, token, max_rank):
    """tiktoken's merge loop on `token`, merging only pairs whose rank is below max_rank."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while True:
        best_i, best = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best:
                best_i, best = i, r
        if best_i < 0:
            return parts
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]


def convert(ranks):
    b2u = bytes_to_unicode()

    def s(b):
        return "".join(b2u[x] for x in b)

    vocab = {}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[s(token)] = rank
        if len(token) == 1:
            continue
        parts = bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            sys.exit(f"token {token!r} (rank {rank}) is not a merge of two lower-ranked tokens")
        merges.append((s(parts[0]), s(parts[1])))
    return vocab, merges


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiktoken-json", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--merges-format", choices=["strings", "pairs"], default="strings",
                    help='merges as "a b" strings (older files) or [a, b] pairs (newer files)')
    args = ap.parse_args()

    pat_str, specials, ranks = read_ranks(args.tiktoken_json)
    vocab, merges = convert(ranks)
    all_specials = dict(specials)
    all_specials.update(PHI4_SPECIALS)
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for t, i in sorted(all_specials.items(), key=lambda kv: kv[1])]
    merge_list = ([f"{a} {b}" for a, b in merges] if args.merges_format == "strings"
                  else [[a, b] for a, b in merges])
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pat_str}, "behavior": "Isolated",
                 "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                 "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": False, "vocab": vocab, "merges": merge_list,
        },
    }
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"}
                                 for a in added},
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    }
    os.makedirs(args.out, exist_ok=True)
    # Write-then-rename, so concurrent readers never see a partial file.
    for name, obj in (("tokenizer.json", tokenizer), ("tokenizer_config.json", config),
                      ("added_tokens.json", PHI4_SPECIALS)):
        fd, tmp = tempfile.mkstemp(dir=args.out, prefix=name + ".")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=None if name == "tokenizer.json" else 2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(args.out, name))
    print(f"wrote {args.out}: {len(vocab)} tokens, {len(merges)} merges, {len(added)} added",
          file=sys.stderr)


if __name__ == "__main__":
    main()
