// Encode throughput of the npm `tiktoken` package (o200k_base, encode_ordinary) on a text file,
// on one core. Prints one JSON line: {"mb_per_s": X, "bytes": N, "tokens": T, "seconds": S}.
// Usage: node tools/tokenizer/bench_reference.mjs TEXT_FILE [SECONDS]
// Run with NODE_PATH or from a directory whose node_modules has tiktoken (see sambay-tokbench).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.env.SAMBAY_TIKTOKEN_DIR + "/package.json");
const { get_encoding } = require("tiktoken");
const text = readFileSync(process.argv[2], "utf8");
const budget = Number(process.argv[3] || 3);
const enc = get_encoding("o200k_base");
enc.encode_ordinary(text);  // warm-up
let reps = 0, tokens = 0;
const t0 = process.hrtime.bigint();
let secs = 0;
while (secs < budget) {
  tokens = enc.encode_ordinary(text).length;
  reps++;
  secs = Number(process.hrtime.bigint() - t0) / 1e9;
}
const bytes = Buffer.byteLength(text, "utf8");
console.log(JSON.stringify({ mb_per_s: (bytes * reps) / secs / 1e6, bytes, tokens, seconds: secs / reps }));
enc.free();
