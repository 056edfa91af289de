#!/usr/bin/env node
// Reference o200k_base pre-tokenizer (the tiktoken `pat_str` as a JavaScript RegExp), used to
// generate tests/data/tokenizer/splits.json for tests/engine/pretokenize_test.cc.
//
//   node tools/tokenizer/split_reference.mjs < strings.json   # JSON array of strings in,
//                                                              # JSON array of piece arrays out
//   node tools/tokenizer/split_reference.mjs --make-fixture tests/data/tokenizer/splits.json
//
// Differences from the Rust pattern, and how they are bridged:
//  - JS has no inline `(?i:...)`: the contractions are spelled out per letter. Rust `regex`
//    case-insensitivity uses simple case folding, under which `s` also matches U+017F (LATIN
//    SMALL LETTER LONG S); no other contraction letter has a non-ASCII fold. So 's is [sS\u017f].
//  - JS `\s` is not Unicode White_Space (it adds U+FEFF and lacks U+0085), so \s and \S are the
//    explicit White_Space class below, which is what Rust `regex` \s means.
//  - Node's Unicode version (see process.versions.unicode) may be newer than the C++ side's ICU;
//    the corpus uses only characters whose categories are long-stable.
import { readFileSync, writeFileSync } from 'node:fs';

const WS = '\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const S = `[${WS}]`;
const NOT_S = `[^${WS}]`;
const CONTRACTION = "(?:'[sS\\u017f]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?";
const PREFIX = '[^\\r\\n\\p{L}\\p{N}]?';
const UPPER = '[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]';
const LOWER = '[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]';
const PATTERN = [
  `${PREFIX}${UPPER}*${LOWER}+${CONTRACTION}`,
  `${PREFIX}${UPPER}+${LOWER}*${CONTRACTION}`,
  '\\p{N}{1,3}',
  ` ?[^${WS}\\p{L}\\p{N}]+[\\r\\n/]*`,
  `${S}*[\\r\\n]+`,
  `${S}+(?!${NOT_S})`,
  `${S}+`,
].join('|');
const RE = new RegExp(PATTERN, 'gu');

export function split(text) {
  const pieces = [];
  let end = 0;
  for (const m of text.matchAll(RE)) {
    if (m.index !== end) throw new Error(`gap at ${end} in ${JSON.stringify(text)}`);
    pieces.push(m[0]);
    end = m.index + m[0].length;
  }
  if (end !== text.length) throw new Error(`unmatched tail in ${JSON.stringify(text)}`);
  return pieces;
}

// ---- Fixture corpus -------------------------------------------------------------------------

const FIXED = [
  // Empty and single characters.
  '', 'a', 'A', ' ', '\n', '\r', '\t', '7', '.', "'", '/', '\u0301', '\u00e9', '\u01c5', '\u4e2d',
  '\u{1F600}', '\u3000', '\u00a0', '\u0085', '\u2028', '\u000b', '\u000c', '\u0000', '\u001b',
  // English prose.
  'Hello, world!',
  'The quick brown fox jumps over the lazy dog.',
  "It was the best of times, it was the worst of times; it was the age of wisdom...",
  'She said: "Don\'t go there!" -- and then (of course) he went anyway.',
  'Mr. O\'Neil\'s 3rd-floor apartment costs $1,250/month (utilities incl.).',
  'HTTPServer and XMLHttpRequest and getURLForID and iPhone and McDonald',
  'ALL CAPS SENTENCE WITH NUMBERS 123 AND PUNCTUATION!!!',
  'e.g. i.e. etc. U.S.A. a.m. p.m.',
  'Hello   world  with    multiple     spaces',
  'trailing spaces   ',
  '   leading spaces',
  'spaces before newline   \nnext line',
  'tabs\tbetween\t\twords\t',
  'line one\nline two\r\nline three\rline four\n\n\nafter blank lines',
  'mixed \r\n \n\r \r\r\n\n end',
  '  \n\n  indented after blank\n',
  '\n\n\n',
  '\r\n\r\n',
  ' \n \n ',
  'word\n',
  'word \n',
  'word\t\n\tword',
  '                                                                 ',
  ' a\u00a0b\u3000c\u2003d\u202fe',
  // Contractions in all cases.
  "I'm I'M i'm you're you'Re YOU'RE we've WE'VE she'll SHE'LL he'd HE'D it's IT'S can't CAN'T",
  "don't Don't DON'T won't isn't 'tis 'Twas rock'n'roll o'clock y'all",
  "it's it'S it\u2019s (curly apostrophe) it''s it' s 's 'S 're 'll",
  "'s's's 're're x'ſ X'ſ naïve's",
  "I'M you'Re it's they'D we'Ll",
  "students' books the 90's 'quoted' \"double\"",
  "ABC'll ABC'LL Ab'Ve ab'vE a'r a're a'rex",
  // Code.
  '#include <vector>\nint main(int argc, char** argv) {\n  std::vector<int> v{1, 2, 3};\n  return v.size() > 0 ? 0 : 1;\n}\n',
  'template <typename T>\nclass Foo final : public Bar<T> {\n public:\n  explicit Foo(T x) : x_(std::move(x)) {}\n\n private:\n  T x_;  // the value\n};\n',
  'def fib(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\nprint([fib(i) for i in range(10)])\n',
  'class A:\n\tdef f(self, x=None, *args, **kwargs):\n\t\tpass\n',
  '{"name": "sambay", "version": 1.5, "tags": ["a", "b"], "nested": {"ok": true, "n": null}}',
  '[\n  {\n    "id": 1,\n    "value": -3.14e-10\n  }\n]\n',
  'x+=1;y-=2;z*=3;a/=4;b%=5;c<<=6;d>>=7;e&&=f||g',
  'a->b::c.d[e](f)<g>{h}',
  'https://example.com/path/to/file.html?query=1&x=y#frag',
  '// comment\n/* block */\n/// doc\n//\n',
  'C:\\Users\\name\\file.txt /usr/local/bin/ ./a/b/../c',
  '<|endoftext|>',
  '<|endoftext|>Hello<|endoftext|>',
  ' <|endoftext|> <|im_start|>user\nhi<|im_end|>',
  '<|user|>What is 2+2?<|end|><|assistant|>',
  // Numbers.
  '0', '12', '123', '1234', '12345678901234567890',
  '3.14159 2.71828 -0.5 +1e10 1e-9',
  '1,000,000 and 1.000.000 and 1 000 000 and 1_000_000',
  'Call 555-123-4567 or +1 (800) 555-0199',
  'v1.2.3 2024-01-15T12:34:56Z 0xFF 0b1010 1st 2nd 3rd 4th',
  '\u0661\u0662\u0663\u0664 \u0967\u0968\u0969 \u2160\u2161\u2162 \u00bd\u00bc \u2460\u2461 \u00b2\u00b3',
  '\uff11\uff12\uff13\uff14\uff15',
  // CJK.
  '\u4f60\u597d\uff0c\u4e16\u754c\uff01\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5\u3002',
  '\u6211\u559c\u6b22\u5403\u82f9\u679c\u548c\u9999\u8549\u3002\u4eca\u5929\u662f2024\u5e741\u670815\u65e5\u3002',
  '\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u30ab\u30bf\u30ab\u30ca\u3068\u3072\u3089\u304c\u306a\u3002',
  '\u30b3\u30fc\u30d2\u30fc\u30fb\u30d6\u30ec\u30a4\u30af\u3001\u3044\u304b\u304c\u3067\u3059\u304b\uff1f',
  '\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4. \uc548\ub155\ud558\uc138\uc694!',
  '\u1112\u1161\u11ab\u1100\u1173\u11af',
  'mixed English\u4e2d\u6587and\u65e5\u672c\u8a9eText',
  // Arabic, Hebrew.
  '\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645! \u0647\u0630\u0627 \u0627\u062e\u062a\u0628\u0627\u0631.',
  '\u0627\u0644\u0652\u0639\u064e\u0631\u064e\u0628\u0650\u064a\u064e\u0651\u0629\u064f',
  '\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd! \u05d6\u05d4 \u05de\u05d1\u05d7\u05df.',
  '\u05d1\u05b0\u05bc\u05e8\u05b5\u05d0\u05e9\u05b4\u05c1\u05d9\u05ea',
  // Devanagari and other Indic with combining marks.
  '\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e! \u092f\u0939 \u090f\u0915 \u092a\u0930\u0940\u0915\u094d\u0937\u0923 \u0939\u0948\u0964',
  '\u0915\u094d\u0937\u0924\u094d\u0930\u093f\u092f \u0939\u093f\u0902\u0926\u0940',
  '\u0ba4\u0bae\u0bbf\u0bb4\u0bcd \u0c24\u0c46\u0c32\u0c41\u0c17\u0c41 \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22',
  // Emoji.
  'I love pizza \u{1F355}\u{1F355}\u{1F355}!',
  '\u{1F44D}\u{1F3FB}\u{1F44D}\u{1F3FF} thumbs',
  '\u{1F468}\u200d\u{1F469}\u200d\u{1F467}\u200d\u{1F466} family',
  '\u{1F3F3}\ufe0f\u200d\u{1F308} flag',
  '\u{1F1FA}\u{1F1F8}\u{1F1EF}\u{1F1F5}\u{1F1E9}\u{1F1EA} flags',
  '\u2764\ufe0f \u263a\ufe0f \u0031\ufe0f\u20e3 keycap',
  'emoji\u{1F600}inside\u{1F600}words',
  // Accented Latin, NFC and NFD.
  'caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c9cole \u00dcber stra\u00dfe',
  'cafe\u0301 nai\u0308ve re\u0301sume\u0301 E\u0301cole U\u0308ber',
  'E\u0301\u0301\u0301 \u0301\u0301abc x\u0301Y\u0301z',
  '\u0301', ' \u0301', '\u0301\u0301', 'A\u0301', '\u0301A', '1\u0301', '.\u0301', '\n\u0301',
  // Greek, Cyrillic, titlecase.
  '\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5! \u0391\u0392\u0393 \u03b1\u03b2\u03b3',
  '\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u042d\u0422\u041e \u0422\u0415\u0421\u0422. \u041c\u043e\u0441\u043a\u0432\u0430',
  '\u01c5ungla \u01c4UNGLA \u01c6ungla \u01c8ubljana \u01cbuk',
  '\u01c5 \u01c5\u01c5 a\u01c5 \u01c5a \u1f88\u1f89 \u1fbc',
  'Stra\u00dfe STRASSE \u1e9e \u0130stanbul \u0131\u015f\u0131k',
  '\u212a\u212b \u017f \u017ft \u2126',
  // Modifier letters and other letters (Lm, Lo) in upper-run backtracking positions.
  'A\u02b0 AB\u02b0 AB\u02b0C AB\u02b0CD1 \u02b0\u02b0 A\u02b0\u02b0B \u02b0a',
  'A\u4e2dB \u4e2dAB AB\u4e2d AB\u4e2dCD AB\u4e2dcd',
  'ABC\u0301DEF ABC\u0301def ABC\u0301 ABC\u0301\'s X\u0301\'LL',
  '\u30fc\u30fc\u30fc \u3005\u3005 A\u3005B',
  // Symbols and punctuation runs.
  '!!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}',
  '\u00a9\u00ae\u2122 \u20ac\u00a3\u00a5 \u2192\u2190\u2194 \u2200\u2203\u2208 \u00b1\u00d7\u00f7',
  '.../\n//\n\r/ ,/\r\n/ :)/\n\n',
  ' !/\n/x !/\r\r\r//\n',
  '--\n--\r\n--\n\n--',
  '\u201cquoted\u201d \u2018single\u2019 \u00abguillemets\u00bb \u300c\u62ec\u5f27\u300d',
  '\u3001\u3002\uff01\uff1f \uff08\u5168\u89d2\uff09',
  '(a) [b] {c} <d>',
  ' .\n',
  ' .',
  '  .',
  ' \u0301.',
];

const ATOMS = [
  'a', 'b', 'z', 'A', 'Z', 'Q', 'ab', 'AB', 'Ab', 'aB', 'the', 'The', 'THE', 'x', 'X',
  '\u00e9', '\u00c9', '\u00df', '\u01c5', '\u01c4', '\u01c6', '\u017f', '\u212a',
  '\u03b1', '\u0391', '\u0436', '\u0416', '\u02b0', '\u02c6', '\u30fc', '\u3005',
  '\u4e2d', '\u6587', '\u3042', '\u30a2', '\ud55c', '\u0627', '\u05d0', '\u0915', '\u0e01',
  '\u0301', '\u0308', '\u093e', '\u094d', '\u20dd', '\u0651', '\u05bc', '\ufe0f', '\u200d',
  '0', '1', '9', '42', '1234', '\u0663', '\u2162', '\u00bd', '\u00b2', '\uff15',
  "'", "'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'ve", "'m", "'M", "'ll", "'LL", "'d",
  "'D", "'\u017f", "'r", "'l", "'v", '\u2019',
  ' ', ' ', ' ', '  ', '   ', '\t', '\n', '\n', '\r', '\r\n', '\n\n', '\u00a0', '\u3000',
  '\u2003', '\u0085', '\u2028', '\u2029', '\u000b', '\u000c', '\u202f', '\u1680',
  '.', ',', '!', '?', ';', ':', '-', '_', '"', '(', ')', '[', ']', '{', '}', '<', '>', '/',
  '//', '\\', '|', '@', '#', '$', '%', '^', '&', '*', '+', '=', '~', '`', '\u00a9', '\u20ac',
  '\u2192', '\u3001', '\u3002', '\uff01', '\u201c', '\u00ab',
  '\u{1F600}', '\u{1F44D}', '\u{1F3FB}', '\u{1F1FA}', '\u{1F1F8}', '\u{1F355}',
  '\u{10400}', '\u{10428}', '\u{20000}', '\u{1D400}', '\u{1D7CE}', '\u{1F100}',
  '\u0000', '\u0007', '\u001f', '\u007f', '\u00ad', '\ufeff', '\u200b',
  '<|endoftext|>',
];

// mulberry32: a small deterministic PRNG.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function corpus() {
  const texts = [...FIXED];
  const rand = rng(0x0200c0de);
  for (let i = 0; i < 300; ++i) {
    const len = 1 + Math.floor(rand() * 24);
    let s = '';
    for (let k = 0; k < len; ++k) s += ATOMS[Math.floor(rand() * ATOMS.length)];
    texts.push(s);
  }
  return texts;
}

if (process.argv[2] === '--make-fixture') {
  const out = process.argv[3];
  if (!out) throw new Error('usage: --make-fixture OUT.json');
  const cases = corpus().map((text) => ({ text, pieces: split(text) }));
  const doc = {
    about: 'o200k_base pre-tokenization splits from tools/tokenizer/split_reference.mjs',
    node_unicode: process.versions.unicode,
    cases,
  };
  writeFileSync(out, JSON.stringify(doc, null, 0).replace(/\},\{"text"/g, '},\n{"text"') + '\n');
  console.error(`wrote ${cases.length} cases to ${out}`);
} else {
  const texts = JSON.parse(readFileSync(0, 'utf8'));
  if (!Array.isArray(texts)) throw new Error('stdin must be a JSON array of strings');
  process.stdout.write(JSON.stringify(texts.map(split)) + '\n');
}
