#!/usr/bin/env node
// Certus Evaluate from Node.js: stubs generated at runtime from proto/ by @grpc/proto-loader,
// calls over @grpc/grpc-js, and offline verification of a DSSE evidence envelope with node:crypto
// Ed25519 (no Certus code involved in the check).
//
//   node certus_client.js evaluate --target 127.0.0.1:50051 --request-file req.json
//       -> prints {"info": GetInfoResponse, "response": EvaluateResponse} as JSON
//   node certus_client.js verify --target 127.0.0.1:50051 --envelope-file line.json [--evidence-id sha256:...]
//       -> fetches the public key with GetInfo, rebuilds DSSE's PAE, verifies the Ed25519 signature;
//          exit 0 and {"verified": true, ...} on success, exit 1 and {"verified": false, "error": ...} on failure
//   node certus_client.js measure --target 127.0.0.1:50051 --text1 ... --text2 ...
//   node certus_client.js verify-proof --bundle proof.json --key signing.key.pub [--key ...]
//       -> offline, no sidecar: checks a `certus-sidecar prove inclusion|consistency` bundle
//          (transparency.js: record signature, RFC 9162 proof, C2SP signed checkpoint, key rotations)
//
// Options: --proto-root DIR (default ../../proto beside this file), --timeout-ms N (default 60000).
// The envelope file holds one evidence log line: the canonical DSSE JSON, exactly as the sidecar wrote it.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
// gRPC modules load on first use: `verify-proof` works offline without `npm ci`
const grpcModules = () => ({ grpc: require('@grpc/grpc-js'), protoLoader: require('@grpc/proto-loader') });
const transparency = require('./transparency');

const PROTO_FILE = 'certus/evaluate/v1/evaluate.proto';
const DEFAULT_PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');

function loadEvaluator(protoRoot) {
  const { grpc, protoLoader } = grpcModules();
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [protoRoot],
    keepCase: true, // field names exactly as in the .proto (evidence_id, not evidenceId)
    longs: String, // uint64 processing_time_us without precision loss
    enums: String, // "OUTCOME_PASS" rather than 1
    bytes: Buffer,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(definition);
  return pkg.certus.evaluate.v1.Evaluator;
}

function connect(target, protoRoot) {
  const { grpc } = grpcModules();
  const Evaluator = loadEvaluator(protoRoot);
  // Pod-local loopback: plaintext. For a remote sidecar use grpc.credentials.createSsl(...) and
  // a bearer token in the call metadata (see docs/clients.md).
  return new Evaluator(target, grpc.credentials.createInsecure());
}

function unary(client, method, request, timeoutMs) {
  const deadline = new Date(Date.now() + timeoutMs);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// ---- DSSE v1 (https://github.com/secure-systems-lab/dsse/blob/master/protocol.md) ----

// PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, lengths in bytes (ASCII decimal).
function pae(payloadType, payload) {
  const type = Buffer.from(payloadType, 'utf8');
  return Buffer.concat([
    Buffer.from(`DSSEv1 ${type.length} `, 'ascii'),
    type,
    Buffer.from(` ${payload.length} `, 'ascii'),
    payload,
  ]);
}

// Raw 32-byte Ed25519 public key (as GetInfo returns it) -> KeyObject, via JWK (RFC 8037).
function ed25519PublicKey(raw) {
  if (!Buffer.isBuffer(raw) || raw.length !== 32) {
    throw new Error(`an Ed25519 public key is 32 bytes, got ${raw ? raw.length : 0}`);
  }
  return crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
}

// The sidecar's key id: "ed25519:" + first 16 hex digits of SHA-256(raw public key).
function keyIdFor(raw) {
  return 'ed25519:' + crypto.createHash('sha256').update(raw).digest('hex').slice(0, 16);
}

function sha256Ref(bytes) {
  return 'sha256:' + crypto.createHash('sha256').update(bytes).digest('hex');
}

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

function strictBase64(field, value) {
  if (typeof value !== 'string' || value.length % 4 !== 0 || !B64.test(value)) {
    throw new Error(`${field} is not canonical base64`);
  }
  return Buffer.from(value, 'base64');
}

/**
 * Verify one evidence envelope line against the sidecar's public key.
 * @param {Buffer} line  the exact bytes of the log line (canonical DSSE JSON, no newline)
 * @param {Buffer} publicKey  raw 32-byte Ed25519 key from GetInfo
 * @param {string} expectedPayloadType  from GetInfo (application/vnd.certus.decision+json)
 * @returns {{evidenceId: string, keyId: string, payload: object}}
 */
function verifyEnvelope(line, publicKey, expectedPayloadType) {
  const envelope = JSON.parse(line.toString('utf8'));
  if (envelope.payloadType !== expectedPayloadType) {
    throw new Error(`payloadType ${JSON.stringify(envelope.payloadType)}, expected ${JSON.stringify(expectedPayloadType)}`);
  }
  const payload = strictBase64('payload', envelope.payload);
  const keyId = keyIdFor(publicKey);
  const key = ed25519PublicKey(publicKey);
  const message = pae(envelope.payloadType, payload);
  const signatures = Array.isArray(envelope.signatures) ? envelope.signatures : [];
  const mine = signatures.filter((s) => s && s.keyid === keyId);
  if (mine.length === 0) {
    throw new Error(`no signature by key ${keyId} (keyids: ${signatures.map((s) => s && s.keyid).join(', ')})`);
  }
  for (const s of mine) {
    const sig = strictBase64('signature', s.sig);
    // Ed25519 takes no separate digest: algorithm null.
    if (sig.length === 64 && crypto.verify(null, message, key, sig)) {
      const decision = JSON.parse(payload.toString('utf8'));
      if (decision.key_id !== keyId) {
        throw new Error(`signed payload names key ${decision.key_id}, signature is by ${keyId}`);
      }
      return { evidenceId: sha256Ref(line), keyId, payload: decision };
    }
  }
  throw new Error(`Ed25519 signature by ${keyId} does not verify`);
}

// ---- command line ----

function parseArgs(argv) {
  const [command, ...rest] = argv;
  const opts = { key: [] };
  for (let i = 0; i < rest.length; i += 1) {
    const a = rest[i];
    if (!a.startsWith('--') || i + 1 >= rest.length) throw new Error(`bad argument ${a}`);
    if (a === '--key') opts.key.push(rest[i + 1]);
    else opts[a.slice(2)] = rest[i + 1];
    i += 1;
  }
  return { command, opts };
}

function cmdVerifyProof(opts) {
  if (!opts.bundle || !opts.key.length) throw new Error('--bundle FILE and --key PUB (repeatable) are required');
  const keys = opts.key.map((f) => {
    const raw = Buffer.from(fs.readFileSync(f, 'utf8').trim(), 'base64');
    if (raw.length !== 32) throw new Error(`${f}: an Ed25519 public key is 32 bytes`);
    return raw;
  });
  return transparency.verifyBundle(JSON.parse(fs.readFileSync(opts.bundle, 'utf8')), keys);
}

function infoJson(info) {
  return { ...info, public_key: info.public_key.toString('base64') };
}

async function cmdEvaluate(client, opts, timeoutMs) {
  if (!opts['request-file']) throw new Error('--request-file is required');
  const request = JSON.parse(fs.readFileSync(opts['request-file'], 'utf8'));
  const info = await unary(client, 'GetInfo', {}, timeoutMs);
  const response = await unary(client, 'Evaluate', request, timeoutMs);
  return { info: infoJson(info), response };
}

async function cmdVerify(client, opts, timeoutMs) {
  if (!opts['envelope-file']) throw new Error('--envelope-file is required');
  let line = fs.readFileSync(opts['envelope-file']);
  if (line.length && line[line.length - 1] === 0x0a) line = line.subarray(0, line.length - 1);
  const info = await unary(client, 'GetInfo', {}, timeoutMs);
  if (info.signature_algorithm !== 'ed25519') throw new Error(`unsupported algorithm ${info.signature_algorithm}`);
  if (keyIdFor(info.public_key) !== info.key_id) {
    throw new Error(`GetInfo key_id ${info.key_id} does not match its public key (${keyIdFor(info.public_key)})`);
  }
  const v = verifyEnvelope(line, info.public_key, info.payload_type);
  if (opts['evidence-id'] && opts['evidence-id'] !== v.evidenceId) {
    throw new Error(`envelope digest ${v.evidenceId} is not evidence_id ${opts['evidence-id']}`);
  }
  return { verified: true, evidence_id: v.evidenceId, key_id: v.keyId, payload: v.payload };
}

async function cmdMeasure(client, opts, timeoutMs) {
  const request = { text1: opts.text1 || '', text2: opts.text2 || '' };
  if (opts.threshold !== undefined) request.threshold = Number(opts.threshold);
  return unary(client, 'Measure', request, timeoutMs);
}

async function main(argv) {
  const { command, opts } = parseArgs(argv);
  if (command === 'verify-proof') return cmdVerifyProof(opts);
  const commands = { evaluate: cmdEvaluate, verify: cmdVerify, measure: cmdMeasure };
  if (!commands[command]) throw new Error(`usage: certus_client.js ${Object.keys(commands).join('|')} --target HOST:PORT ...`);
  if (!opts.target) throw new Error('--target HOST:PORT is required');
  const timeoutMs = Number(opts['timeout-ms'] || 60000);
  const client = connect(opts.target, opts['proto-root'] || DEFAULT_PROTO_ROOT);
  try {
    return await commands[command](client, opts, timeoutMs);
  } finally {
    client.close();
  }
}

module.exports = { pae, ed25519PublicKey, keyIdFor, verifyEnvelope, loadEvaluator, connect };

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (out) => {
      process.stdout.write(JSON.stringify(out) + '\n');
    },
    (err) => {
      const detail = err && err.code !== undefined ? { grpc_code: err.code, details: err.details } : {};
      process.stdout.write(JSON.stringify({ ok: false, verified: false, error: String(err && err.message), ...detail }) + '\n');
      process.exitCode = 1;
    },
  );
}
