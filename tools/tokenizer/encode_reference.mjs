#!/usr/bin/env node
// Reference o200k_base token ids from the npm `tiktoken` package (the WASM build of OpenAI's Rust
// tiktoken), used to make tests/data/tokenizer/encode_expected.json for
// tests/engine/bpe_tokenizer_test.cc.
//
//   node tools/tokenizer/encode_reference.mjs < strings.json
//       JSON array of strings in; one JSON line per string out:
//       {"ordinary": ids, "special": ids}   (special: encode(text, "all"), o200k's own specials)
//   node tools/tokenizer/encode_reference.mjs --make-fixture CORPUS.json OUT.json
//       The committed fixture: per corpus entry its UTF-8 length and ids for
//         ordinary  encode_ordinary(text)
//         special   encode(text, "all") with o200k's specials; omitted when equal to ordinary
//         phi4      encode(text, "all") with o200k's + the Phi-4 chat specials (PHI4_SPECIALS);
//                   omitted when equal to special (or to ordinary when special is omitted)
//
// The package is found at $SAMBAY_TIKTOKEN_DIR, else third_party/npm/node_modules/tiktoken
// (scripts/install-deps.sh installs tiktoken@1.0.22 there).
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const dir = process.env.SAMBAY_TIKTOKEN_DIR ||
  path.resolve(path.dirname(new URL(import.meta.url).pathname),
               '../../third_party/npm/node_modules/tiktoken');
const require = createRequire(path.join(dir, 'package.json'));
const { Tiktoken, get_encoding } = require(dir);
const version = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')).version;

// Phi-4-mini chat/tool specials (spec section 8 lists 199999 and 200018..200023; the rest follow
// the Phi-4-mini-instruct added_tokens.json). tools/tokenizer/make_hf_tokenizer.py has the same.
export const PHI4_SPECIALS = {
  '<|endoftext|>': 199999,
  '<|endofprompt|>': 200018,
  '<|assistant|>': 200019,
  '<|end|>': 200020,
  '<|user|>': 200021,
  '<|system|>': 200022,
  '<|tool|>': 200023,
  '<|/tool|>': 200024,
  '<|tool_call|>': 200025,
  '<|/tool_call|>': 200026,
  '<|tool_response|>': 200027,
  '<|tag|>': 200028,
};

const base = get_encoding('o200k_base');
const o200k = JSON.parse(readFileSync(path.join(dir, 'encoders/o200k_base.json'), 'utf8'));
const phi4 = new Tiktoken(o200k.bpe_ranks, { ...o200k.special_tokens, ...PHI4_SPECIALS },
                          o200k.pat_str);

const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

function encodeAll(text) {
  const ordinary = Array.from(base.encode_ordinary(text));
  const special = Array.from(base.encode(text, 'all'));
  const withPhi4 = Array.from(phi4.encode(text, 'all'));
  return { ordinary, special, phi4: withPhi4 };
}

const args = process.argv.slice(2);
if (args[0] === '--make-fixture') {
  const corpus = JSON.parse(readFileSync(args[1], 'utf8'));
  const lines = corpus.map((text) => {
    const e = encodeAll(text);
    const out = { bytes: Buffer.byteLength(text, 'utf8'), ordinary: e.ordinary };
    if (!same(e.special, e.ordinary)) out.special = e.special;
    if (!same(e.phi4, e.special)) out.phi4 = e.phi4;
    return '  ' + JSON.stringify(out);
  });
  const header = {
    about: 'o200k_base ids of tests/data/tokenizer/corpus.json from the npm tiktoken package ' +
           '(tools/tokenizer/encode_reference.mjs --make-fixture)',
    package: `tiktoken@${version}`,
    encoding: 'o200k_base',
    phi4_special_tokens: PHI4_SPECIALS,
  };
  const head = JSON.stringify(header, null, 2).replace(/\n}$/, ',\n  "cases": [\n');
  writeFileSync(args[2], head + lines.join(',\n') + '\n  ]\n}\n');
  console.error(`wrote ${corpus.length} cases to ${args[2]} (tiktoken@${version})`);
} else {
  const strings = JSON.parse(readFileSync(0, 'utf8'));
  for (const text of strings) {
    const e = encodeAll(text);
    console.log(JSON.stringify({ ordinary: e.ordinary, special: e.special }));
  }
}
base.free();
phi4.free();
