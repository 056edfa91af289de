#!/usr/bin/env node
// The router's OpenAI-compatible HTTP API driven by the real `openai` npm client (the SDK
// that users point at an inference server), against a real cluster of the tiny model (served
// name "tiny"): tests/router/openai_client_test.cc starts the cluster and runs this script.
//
//   node openai_client.mjs main      BASE_URL ROUTER_METRICS_URL WORKER_METRICS_URL...
//   node openai_client.mjs ratelimit BASE_URL ROUTER_METRICS_URL WORKER_METRICS_URL...
//   node openai_client.mjs auth      BASE_URL  (the router's API key in $SAMBAY_API_KEY)
//
// BASE_URL is http://127.0.0.1:PORT/v1; the metrics URLs are the router's and the decode
// workers' /metrics. "main" runs every check below but the full queue; "ratelimit" needs a
// router with --max-concurrent 1 --max-queue 0 and checks RateLimitError; "auth" needs a router with
// --api-keys-file and checks AuthenticationError. The tiny model's output is random bytes, so the
// checks compare structure, token counts and runs with each other, never text against a fixed
// string.
//
// Prints one line per check ("ok - ..."); exits 1 with "FAIL: ..." at the first failure.
//
// The SDK is imported from $SAMBAY_OPENAI_DIR, else third_party/npm/node_modules/openai
// (scripts/install-deps.sh installs openai@5.23.2 there). That folder is not on this script's
// module path, so the ESM entry (the module `import OpenAI from 'openai'` loads) is imported by
// its file URL.
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const sdkDir = process.env.SAMBAY_OPENAI_DIR ||
  path.resolve(path.dirname(new URL(import.meta.url).pathname),
               '../../third_party/npm/node_modules/openai');
const { default: OpenAI } = await import(pathToFileURL(path.join(sdkDir, 'index.mjs')).href);

const [mode, baseURL, routerMetrics, ...workerMetrics] = process.argv.slice(2);
const MODEL = 'tiny';
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0, timeout: 20000 });
const CHAT = [{ role: 'user', content: 'Say something about the sea.' }];

class CheckError extends Error {}
function check(cond, what) {
  if (!cond) throw new CheckError(what);
}
function ok(line) { console.log(`ok - ${line}`); }
const show = (x) => JSON.stringify(x);

// ---- Helpers -------------------------------------------------------------------------------

// Sum of the samples of `name` whose labels include every `labels` pair (Prometheus text).
async function metricSum(url, name, labels = {}) {
  const text = await (await fetch(url)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m || m[1] !== name) continue;
    const have = m[2] || '';
    if (Object.entries(labels).every(([k, v]) => have.includes(`${k}="${v}"`))) {
      sum += Number(m[3]);
    }
  }
  return sum;
}

// Polls `fn` every 20 ms until it returns true or `ms` pass.
async function waitUntil(fn, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await fn()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
}

// Every running gauge (the router's and each decode worker's) at 0 within `ms`.
async function gaugesAtZero(ms) {
  const read = async () => [
    await metricSum(routerMetrics, 'sambay_router_running_requests'),
    ...(await Promise.all(
      workerMetrics.map((u) => metricSum(u, 'sambay_worker_running_sequences')))),
  ];
  let last = [];
  const zero = await waitUntil(async () => {
    last = await read();
    return last.every((v) => v === 0);
  }, ms);
  return { zero, last };
}

// Runs a streaming chat request and collects it: the chunks, the text, the finish reason.
async function chatStream(params) {
  const stream = await client.chat.completions.create({ model: MODEL, ...params, stream: true });
  const out = { chunks: [], text: '', finish: null, usage: null, role: null, logprobs: [] };
  for await (const chunk of stream) {
    out.chunks.push(chunk);
    if (chunk.usage) out.usage = chunk.usage;
    const choice = chunk.choices[0];
    if (!choice) continue;
    if (choice.delta.role) out.role = choice.delta.role;
    out.text += choice.delta.content ?? '';
    if (choice.logprobs?.content) out.logprobs.push(...choice.logprobs.content);
    if (choice.finish_reason) out.finish = choice.finish_reason;
  }
  return out;
}

async function completionStream(params) {
  const stream = await client.completions.create({ model: MODEL, ...params, stream: true });
  const out = { chunks: [], text: '', finish: null, usage: null };
  for await (const chunk of stream) {
    out.chunks.push(chunk);
    if (chunk.usage) out.usage = chunk.usage;
    const choice = chunk.choices[0];
    if (!choice) continue;
    out.text += choice.text;
    if (choice.finish_reason) out.finish = choice.finish_reason;
  }
  return out;
}

// The SDK error a request throws, or a failed check when it succeeds.
async function errorOf(promise, what) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new CheckError(`${what}: succeeded, expected an error`);
}

// ---- Checks --------------------------------------------------------------------------------

async function chatNonStreaming() {
  const r = await client.chat.completions.create({
    model: MODEL, messages: CHAT, max_tokens: 16, temperature: 0, ignore_eos: true,
  });
  check(r.object === 'chat.completion', `chat object: ${show(r.object)}`);
  check(typeof r.id === 'string' && r.id.startsWith('chatcmpl-'), `chat id: ${show(r.id)}`);
  check(r.model === MODEL, `chat model: ${show(r.model)}`);
  check(r.choices.length === 1, `chat choices: ${r.choices.length}`);
  const c = r.choices[0];
  check(c.index === 0 && c.message.role === 'assistant', `chat message: ${show(c)}`);
  check(typeof c.message.content === 'string', `chat content: ${show(c.message)}`);
  check(c.finish_reason === 'length', `chat finish_reason: ${show(c.finish_reason)}`);
  check(c.logprobs === null, `chat logprobs not asked for: ${show(c.logprobs)}`);
  const u = r.usage;
  check(u.completion_tokens === 16 && u.prompt_tokens > 0 &&
        u.total_tokens === u.prompt_tokens + u.completion_tokens, `chat usage: ${show(u)}`);
  ok(`chat, not streaming: 16 tokens, finish_reason length, usage ${show(u)}`);
  return r;
}

async function chatStreaming(whole) {
  const s = await chatStream({ messages: CHAT, max_tokens: 16, temperature: 0, ignore_eos: true });
  check(s.role === 'assistant', `chat stream role: ${show(s.role)}`);
  check(s.chunks[0].choices[0].delta.role === 'assistant', 'chat stream: the role comes first');
  check(s.chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === s.chunks[0].id),
        'chat stream: every chunk is a chat.completion.chunk of one id');
  check(s.finish === 'length', `chat stream finish_reason: ${show(s.finish)}`);
  const last = s.chunks[s.chunks.length - 1];
  check(last.choices[0]?.finish_reason === 'length',
        'chat stream: finish_reason in the last chunk');
  check(s.usage === null, 'chat stream: no usage without include_usage');
  check(s.text === whole.choices[0].message.content,
        `chat stream text ${show(s.text)} != the non-streaming greedy text ` +
        show(whole.choices[0].message.content));
  ok(`chat, streaming: ${s.chunks.length} chunks, the same greedy text as not streaming`);
}

async function completions() {
  const params = { prompt: 'Once upon a time', max_tokens: 12, temperature: 0, ignore_eos: true };
  const r = await client.completions.create({ model: MODEL, ...params });
  check(r.object === 'text_completion' && r.id.startsWith('cmpl-'), `completion: ${show(r)}`);
  check(r.choices.length === 1 && typeof r.choices[0].text === 'string', 'completion text');
  check(r.choices[0].finish_reason === 'length', `completion finish: ${show(r.choices[0])}`);
  check(r.usage.completion_tokens === 12 && r.usage.prompt_tokens > 0,
        `completion usage: ${show(r.usage)}`);
  ok(`completions, not streaming: 12 tokens, usage ${show(r.usage)}`);
  const s = await completionStream(params);
  check(s.chunks.every((c) => c.object === 'text_completion'), 'completion chunks');
  check(s.finish === 'length', `completion stream finish: ${show(s.finish)}`);
  check(s.text === r.choices[0].text,
        `completion stream text ${show(s.text)} != ${show(r.choices[0].text)}`);
  ok(`completions, streaming: ${s.chunks.length} chunks, the same greedy text`);
  const ids = await client.completions.create({
    model: MODEL, prompt: [1, 2, 3, 4, 5], max_tokens: 4, temperature: 0, ignore_eos: true,
  });
  check(ids.usage.prompt_tokens === 5 && ids.usage.completion_tokens === 4,
        `completion of a token-id prompt: usage ${show(ids.usage)}`);
  ok('completions with a token-id prompt: prompt_tokens 5');
}

async function includeUsage() {
  const s = await chatStream({
    messages: CHAT, max_tokens: 10, temperature: 0, ignore_eos: true,
    stream_options: { include_usage: true },
  });
  const last = s.chunks[s.chunks.length - 1];
  check(Array.isArray(last.choices) && last.choices.length === 0,
        `include_usage: the last chunk's choices ${show(last.choices)}`);
  check(last.usage && last.usage.completion_tokens === 10 &&
        last.usage.total_tokens === last.usage.prompt_tokens + 10,
        `include_usage: the last chunk's usage ${show(last.usage)}`);
  check(s.chunks.slice(0, -1).every((c) => c.usage === null),
        'include_usage: usage null in every other chunk');
  const c = await completionStream({
    prompt: 'abc', max_tokens: 7, temperature: 0, ignore_eos: true,
    stream_options: { include_usage: true },
  });
  const clast = c.chunks[c.chunks.length - 1];
  check(clast.choices.length === 0 && clast.usage?.completion_tokens === 7,
        `include_usage (completions): the last chunk ${show(clast)}`);
  ok(`stream_options.include_usage: a final chunk with choices [] and usage ${show(last.usage)}`);
}

// A stop string that first occurs at character k >= 1 of `text`: up to 3 printable ASCII
// characters (the text is random bytes; its U+FFFD are the decoder's, not the model's).
function pickStop(text) {
  const chars = [...text];
  for (const len of [3, 2, 1]) {
    for (let k = 1; k + len <= chars.length; ++k) {
      const piece = chars.slice(k, k + len).join('');
      if (!/^[\x21-\x7e]+$/.test(piece)) continue;
      const at = text.indexOf(piece);
      if (at === chars.slice(0, k).join('').length) {
        return { stop: piece, before: text.slice(0, at) };
      }
    }
  }
  return null;
}

async function stopStrings() {
  const params = { prompt: 'The stop string test:', max_tokens: 64, temperature: 0 };
  const free = await client.completions.create({ model: MODEL, ...params, ignore_eos: true });
  const full = free.choices[0].text;
  const pick = pickStop(full);
  check(pick !== null, `no printable stop string in the greedy text ${show(full)}`);
  const r = await client.completions.create({
    model: MODEL, ...params, ignore_eos: true, stop: [pick.stop],
  });
  check(r.choices[0].finish_reason === 'stop',
        `stop ${show(pick.stop)}: finish_reason ${show(r.choices[0].finish_reason)}`);
  check(r.choices[0].text === pick.before,
        `stop ${show(pick.stop)}: text ${show(r.choices[0].text)}, expected ${show(pick.before)}`);
  check(r.usage.completion_tokens < free.usage.completion_tokens,
        `stop: ${r.usage.completion_tokens} tokens, not fewer than ` +
        `${free.usage.completion_tokens}`);
  const s = await chatStream({ messages: CHAT, max_tokens: 64, temperature: 0, ignore_eos: true });
  const chatPick = pickStop(s.text);
  check(chatPick !== null, `no printable stop string in the greedy chat text ${show(s.text)}`);
  const cs = await chatStream({
    messages: CHAT, max_tokens: 64, temperature: 0, ignore_eos: true, stop: chatPick.stop,
  });
  check(cs.finish === 'stop' && cs.text === chatPick.before,
        `chat stream stop ${show(chatPick.stop)}: ${show(cs.finish)} ${show(cs.text)}, expected ` +
        show(chatPick.before));
  ok(`stop strings: completions stop ${show(pick.stop)} after ${pick.before.length} chars, ` +
     `streamed chat stop ${show(chatPick.stop)}; finish_reason stop, the text ends before it`);
}

async function logprobs() {
  const r = await client.chat.completions.create({
    model: MODEL, messages: CHAT, max_tokens: 12, temperature: 0, ignore_eos: true,
    logprobs: true, top_logprobs: 3,
  });
  const content = r.choices[0].logprobs?.content;
  check(Array.isArray(content) && content.length === r.usage.completion_tokens,
        `chat logprobs: ${content?.length} entries for ${r.usage.completion_tokens} tokens`);
  for (const e of content) {
    check(typeof e.token === 'string' && e.logprob <= 0 &&
          (e.bytes === null || Array.isArray(e.bytes)),
          `chat logprobs entry ${show(e)}`);
    check(e.top_logprobs.length === 3, `chat top_logprobs of ${e.top_logprobs.length}, not 3`);
    // Greedy: the chosen token is the most likely one.
    check(e.top_logprobs[0].logprob === e.logprob, `greedy token not the top one: ${show(e)}`);
  }
  const s = await chatStream({
    messages: CHAT, max_tokens: 12, temperature: 0, ignore_eos: true, logprobs: true,
    top_logprobs: 2,
  });
  check(s.logprobs.length === 12 && s.logprobs.every((e) => e.top_logprobs.length === 2),
        `streamed chat logprobs: ${s.logprobs.length} entries`);
  check(show(s.logprobs.map((e) => e.logprob)) === show(content.map((e) => e.logprob)),
        'streamed chat logprobs differ from the non-streaming ones (greedy)');
  const c = await client.completions.create({
    model: MODEL, prompt: [7, 8, 9], max_tokens: 9, temperature: 0, ignore_eos: true, logprobs: 2,
  });
  const lp = c.choices[0].logprobs;
  check(lp && lp.tokens.length === 9 && lp.token_logprobs.length === 9 &&
        lp.top_logprobs.length === 9 && lp.text_offset.length === 9,
        `completion logprobs: ${show(lp)}`);
  check(lp.top_logprobs.every((t) => Object.keys(t).length >= 1 && Object.keys(t).length <= 2),
        `completion top_logprobs: ${show(lp.top_logprobs)}`);
  check(lp.token_logprobs.every((v) => v <= 0),
        `completion token_logprobs ${show(lp.token_logprobs)}`);
  ok('logprobs: chat (one entry per token, top_logprobs 3; streamed the same), completions (9 ' +
     'tokens, token_logprobs, top_logprobs, text_offset)');
}

async function seeded() {
  const run = async (seed) => {
    const r = await client.chat.completions.create({
      model: MODEL, messages: CHAT, max_tokens: 32, temperature: 1, seed, ignore_eos: true,
      logprobs: true,
    });
    return { text: r.choices[0].message.content, lps: show(r.choices[0].logprobs.content) };
  };
  const a = await run(7);
  const b = await run(7);
  const other = await run(8);
  check(a.text === b.text && a.lps === b.lps, `seed 7 twice: ${show(a.text)} vs ${show(b.text)}`);
  // 32 tokens sampled at temperature 1 from 320 ids: the same logprob sequence for another seed
  // would be a collision of odds far below 1e-9.
  check(other.lps !== a.lps, `seed 8 gave the same tokens as seed 7: ${show(a.text)}`);
  ok('seeded sampling: temperature 1 seed 7 twice gives the same tokens; seed 8 others');
}

async function models() {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  check(ids.includes(MODEL), `models.list: ${show(ids)}`);
  ok(`models.list: ${show(ids)}`);
}

async function abortMidStream() {
  const cancelledBefore = await metricSum(routerMetrics, 'sambay_router_request_failures_total',
                                          { reason: 'cancelled' });
  const controller = new AbortController();
  const stream = await client.chat.completions.create(
    { model: MODEL, messages: CHAT, max_tokens: 2000, temperature: 0, ignore_eos: true,
      stream: true },
    { signal: controller.signal });
  let chunks = 0;
  let finish = null;
  let aborted = false;
  try {
    for await (const chunk of stream) {
      chunks += 1;
      if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
      if (chunks === 3) controller.abort();
    }
  } catch (e) {
    check(e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError',
          `abort: the stream threw ${e?.constructor?.name}: ${e}`);
    aborted = true;
  }
  check(finish === null, `abort: the 2000-token stream finished (${finish}) before the abort`);
  check(aborted || controller.signal.aborted, 'abort: the stream did not stop');
  const g = await gaugesAtZero(5000);
  check(g.zero, `abort: running gauges (router, decode workers) ${show(g.last)} not 0 after 5 s`);
  const cancelled = await metricSum(routerMetrics, 'sambay_router_request_failures_total',
                                    { reason: 'cancelled' });
  check(cancelled === cancelledBefore + 1,
        `abort: sambay_router_request_failures_total{reason="cancelled"} ${cancelledBefore} -> ` +
        `${cancelled}, expected +1`);
  ok(`AbortController at chunk 3 of a 2000-token stream (${chunks} read in all): running gauges ` +
     `${show(g.last)}, one cancelled request in the router`);
}

async function typedErrors() {
  const n2 = await errorOf(client.chat.completions.create({ model: MODEL, messages: CHAT, n: 2 }),
                           'n: 2');
  check(n2 instanceof OpenAI.BadRequestError && n2.status === 400 && n2.param === 'n' &&
        n2.type === 'invalid_request_error', `n: 2 gave ${n2?.constructor?.name} ${n2}`);
  const empty = await errorOf(client.chat.completions.create({ model: MODEL, messages: [] }),
                              'messages []');
  check(empty instanceof OpenAI.BadRequestError && empty.status === 400 &&
        empty.param === 'messages', `messages []: ${empty?.constructor?.name} ${empty}`);
  const unknown = await errorOf(
    client.chat.completions.create({ model: 'no-such-model', messages: CHAT }), 'unknown model');
  check(unknown instanceof OpenAI.NotFoundError && unknown.status === 404 &&
        unknown.code === 'model_not_found' && unknown.param === 'model',
        `unknown model: ${unknown?.constructor?.name} ${unknown}`);
  const streamed = await errorOf(
    client.completions.create({ model: MODEL, prompt: 'x', max_tokens: 5, temperature: -1,
                                stream: true }), 'temperature -1');
  check(streamed instanceof OpenAI.BadRequestError && streamed.param === 'temperature',
        `streaming with temperature -1: ${streamed?.constructor?.name} ${streamed}`);
  ok('typed errors: BadRequestError 400 (n: 2 with param n, messages [] with param messages, a ' +
     'stream with temperature -1), NotFoundError 404 model_not_found');
}

// Router with --api-keys-file holding $SAMBAY_API_KEY: the key works; a wrong key, and the key
// with its case flipped, are AuthenticationError (401, authentication_error) on every route.
async function auth() {
  const key = process.env.SAMBAY_API_KEY || '';
  check(key.length > 0, 'auth: no $SAMBAY_API_KEY');
  const good = new OpenAI({ baseURL, apiKey: key, maxRetries: 0, timeout: 20000 });
  const done = await good.chat.completions.create(
    { model: MODEL, messages: CHAT, max_tokens: 4, temperature: 0, ignore_eos: true });
  check(done.usage.completion_tokens === 4, `auth: the right key: ${show(done.usage)}`);
  const flipped = key === key.toUpperCase() ? key.toLowerCase() : key.toUpperCase();
  for (const [what, wrongKey] of [['a wrong key', 'sk-not-a-key-of-this-router'],
                                  ['the key in another case', flipped]]) {
    const wrong = new OpenAI({ baseURL, apiKey: wrongKey, maxRetries: 0, timeout: 20000 });
    for (const [route, call] of [
      ['chat', () => wrong.chat.completions.create({ model: MODEL, messages: CHAT, max_tokens: 4 })],
      ['completions', () => wrong.completions.create({ model: MODEL, prompt: 'x', max_tokens: 4 })],
      ['models', () => wrong.models.list()],
    ]) {
      const err = await errorOf(call(), `${what} on ${route}`);
      check(err instanceof OpenAI.AuthenticationError && err.status === 401 &&
            err.type === 'authentication_error' && err.message.includes('invalid API key') &&
            !err.message.includes(wrongKey),
            `${what} on ${route}: ${err?.constructor?.name} ${err}`);
    }
  }
  ok('AuthenticationError 401 for a wrong key and for the key in another case (chat, ' +
     'completions, models); the right key is served');
}

// Router with --max-concurrent 1 --max-queue 0: a second request while one streams is a 429.
async function rateLimit() {
  const controller = new AbortController();
  const held = await client.chat.completions.create(
    { model: MODEL, messages: CHAT, max_tokens: 4000, temperature: 0, ignore_eos: true,
      stream: true },
    { signal: controller.signal });
  const it = held[Symbol.asyncIterator]();
  const first = await it.next();
  check(!first.done, 'ratelimit: the held stream sent nothing');
  const err = await errorOf(
    client.chat.completions.create({ model: MODEL, messages: CHAT, max_tokens: 4 }),
    'a request beyond --max-concurrent 1 --max-queue 0');
  controller.abort();
  try {
    while (!(await it.next()).done) { /* drain until the abort ends it */ }
  } catch (e) { /* the abort */ }
  check(err instanceof OpenAI.RateLimitError && err.status === 429 &&
        err.type === 'rate_limit_error', `full queue: ${err?.constructor?.name} ${err}`);
  check(err.headers?.get('retry-after') === '1',
        `full queue: Retry-After ${show(err.headers?.get('retry-after'))}`);
  const g = await gaugesAtZero(5000);
  check(g.zero, `ratelimit: running gauges ${show(g.last)} not 0 after the abort`);
  const again = await client.chat.completions.create({
    model: MODEL, messages: CHAT, max_tokens: 4, temperature: 0, ignore_eos: true,
  });
  check(again.usage.completion_tokens === 4, 'ratelimit: a request after the slot freed');
  ok('RateLimitError 429 (Retry-After 1) on a full queue; served again once the slot is free');
}

async function main() {
  if (mode === 'ratelimit') {
    await rateLimit();
    return;
  }
  if (mode === 'auth') {
    await auth();
    return;
  }
  check(mode === 'main', `unknown mode ${show(mode)}`);
  const whole = await chatNonStreaming();
  await chatStreaming(whole);
  await completions();
  await includeUsage();
  await stopStrings();
  await logprobs();
  await seeded();
  await models();
  await abortMidStream();
  await typedErrors();
}

try {
  await main();
  console.log(`all ${mode} checks passed`);
} catch (e) {
  const what = e instanceof CheckError ? e.message : `${e?.constructor?.name}: ${e?.stack ?? e}`;
  console.log(`FAIL: ${what}`);
  process.exit(1);
}
