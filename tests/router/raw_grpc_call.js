#!/usr/bin/env node
// One gRPC call sent as raw HTTP/2 (Node's http2 module), with a header value that a gRPC client
// refuses to send (TAB, bytes >= 0x80): the hostile client of tests/router/generate_test.cc.
//   node raw_grpc_call.js PORT PATH HEADER_NAME HEADER_VALUE_HEX BODY_HEX
// BODY_HEX is the serialized request message; it is sent as one gRPC frame. Prints one JSON
// line: {status, grpc_status, grpc_message, frames, error}; always exits 0 once it has an
// answer or an error (the test reads the line).
'use strict';
const http2 = require('http2');

const [port, path, name, valueHex, bodyHex] = process.argv.slice(2);
const out = { frames: 0 };
const done = () => { console.log(JSON.stringify(out)); process.exit(0); };
const client = http2.connect(`http://127.0.0.1:${port}`);
client.on('error', (e) => { out.error = String(e); done(); });
setTimeout(() => { out.error = 'timeout'; done(); }, 20000).unref();

const body = Buffer.from(bodyHex, 'hex');
const frame = Buffer.alloc(5 + body.length);
frame.writeUInt8(0, 0);
frame.writeUInt32BE(body.length, 1);
body.copy(frame, 5);
let req;
try {
  req = client.request({
    ':method': 'POST',
    ':path': path,
    'content-type': 'application/grpc',
    te: 'trailers',
    [name]: Buffer.from(valueHex, 'hex').toString('latin1'),
  });
} catch (e) {
  out.error = `request refused by node: ${e}`;
  done();
}
req.on('response', (h) => {
  out.status = h[':status'];
  if (h['grpc-status'] !== undefined) out.grpc_status = String(h['grpc-status']);
  if (h['grpc-message'] !== undefined) out.grpc_message = String(h['grpc-message']);
});
req.on('trailers', (t) => {
  if (t['grpc-status'] !== undefined) out.grpc_status = String(t['grpc-status']);
  if (t['grpc-message'] !== undefined) out.grpc_message = String(t['grpc-message']);
});
req.on('data', () => { out.frames += 1; });
req.on('end', () => { client.close(); done(); });
req.on('error', (e) => { out.error = String(e); done(); });
req.end(frame);
