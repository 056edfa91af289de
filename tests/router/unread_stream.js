#!/usr/bin/env node
// A client that opens one gRPC server stream and does not read it for SECONDS (Node's http2, the
// stream paused: once its buffer is full no WINDOW_UPDATE goes out, so the server's writes
// block), then reads what is left: the hostile client of tests/router/edges_test.cc.
//   node unread_stream.js PORT PATH BODY_HEX SECONDS
// Prints one JSON line when the stream is over (or 10 s after the pause): {closed, rst_code,
// grpc_status, bytes, seconds}; always exits 0.
'use strict';
const http2 = require('http2');

const [port, path, bodyHex, seconds] = process.argv.slice(2);
const started = Date.now();
const out = { closed: false };
const done = () => {
  out.seconds = (Date.now() - started) / 1000;
  console.log(JSON.stringify(out));
  process.exit(0);
};
const client = http2.connect(`http://127.0.0.1:${port}`);
client.on('error', (e) => { out.error = String(e); done(); });
setTimeout(done, (Number(seconds) + 10) * 1000).unref();

const body = Buffer.from(bodyHex, 'hex');
const frame = Buffer.alloc(5 + body.length);
frame.writeUInt8(0, 0);
frame.writeUInt32BE(body.length, 1);
body.copy(frame, 5);
const req = client.request({
  ':method': 'POST',
  ':path': path,
  'content-type': 'application/grpc',
  te: 'trailers',
});
out.bytes = 0;
req.pause();
setTimeout(() => {
  req.on('data', (d) => { out.bytes += d.length; });
  req.resume();
}, Number(seconds) * 1000);
req.on('trailers', (t) => {
  if (t['grpc-status'] !== undefined) out.grpc_status = String(t['grpc-status']);
});
req.on('close', () => {
  out.closed = true;
  out.rst_code = req.rstCode;
  done();
});
req.on('error', (e) => { out.error = String(e); });
req.end(frame);
