// Check one Certus decision without the log, in Node with node:crypto only: the record's DSSE
// signature, its RFC 9162 inclusion proof, and the C2SP signed checkpoint it leads to; or a
// consistency proof between two checkpoints. Trusted keys are a keyring's roots: rotation records
// in the bundle ("key_rotations"), signed by a trusted key, extend trust to the key they name from
// their effective_seq on. Same rules as certus.client.transparency (Python); bundles come from
// `certus-sidecar prove inclusion|consistency`.
//
//   node certus_client.js verify-proof --bundle proof.json --key signing.key.pub [--key other.pub]
'use strict';

const crypto = require('node:crypto');

const DECISION_PAYLOAD_TYPE = 'application/vnd.certus.decision+json';
const ROTATION_PAYLOAD_TYPE = 'application/vnd.certus.key-rotation+json';
const INCLUSION_FORMAT = 'certus-inclusion-proof/v1';
const CONSISTENCY_FORMAT = 'certus-consistency-proof/v1';
const SIG_PREFIX = '\u2014 ';

const sha256 = (...parts) => crypto.createHash('sha256').update(Buffer.concat(parts)).digest();
const leafHash = (data) => sha256(Buffer.from([0]), data);
const nodeHash = (l, r) => sha256(Buffer.from([1]), l, r);
const keyIdFor = (raw) => 'ed25519:' + crypto.createHash('sha256').update(raw).digest('hex').slice(0, 16);

function b64(field, value) {
  if (typeof value !== 'string' || value.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) {
    throw new Error(`${field}: not canonical base64`);
  }
  return Buffer.from(value, 'base64');
}

function ed25519Verify(raw, message, sig) {
  const key = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
  return sig.length === 64 && crypto.verify(null, message, key, sig);
}

function pae(type, payload) {
  const t = Buffer.from(type, 'utf8');
  return Buffer.concat([Buffer.from(`DSSEv1 ${t.length} `), t, Buffer.from(` ${payload.length} `), payload]);
}

// ---- RFC 9162 §2.1.3.2 and §2.1.4.2 ----

function verifyInclusion(index, size, leaf, proof, root) {
  if (!(index >= 0 && index < size)) throw new Error(`leaf index ${index} is not in a tree of size ${size}`);
  let fn = BigInt(index);
  let sn = BigInt(size - 1);
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) throw new Error('inclusion proof is longer than the tree is deep');
    if ((fn & 1n) === 1n || fn === sn) {
      r = nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error('inclusion proof is shorter than the tree is deep');
  if (!r.equals(root)) throw new Error("inclusion proof does not lead to the checkpoint's root hash");
}

function verifyConsistency(oldSize, newSize, oldRoot, newRoot, proof) {
  if (!(oldSize >= 0 && oldSize <= newSize)) throw new Error(`a tree of size ${newSize} cannot extend one of size ${oldSize} (a rollback)`);
  if (oldSize === newSize) {
    if (proof.length) throw new Error('a proof between equal sizes must be empty');
    if (!oldRoot.equals(newRoot)) throw new Error(`two different root hashes for tree size ${newSize} (a forked log)`);
    return;
  }
  if (oldSize === 0) {
    if (proof.length) throw new Error('a proof from the empty tree must be empty');
    return;
  }
  if (!proof.length) throw new Error('empty consistency proof');
  const path = (oldSize & (oldSize - 1)) === 0 ? [oldRoot, ...proof] : [...proof];
  let fn = BigInt(oldSize - 1);
  let sn = BigInt(newSize - 1);
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0n) throw new Error('consistency proof is too long');
    if ((fn & 1n) === 1n || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error('consistency proof is too short');
  if (!fr.equals(oldRoot)) throw new Error('consistency proof does not reproduce the old root hash (the old tree was changed)');
  if (!sr.equals(newRoot)) throw new Error('consistency proof does not reproduce the new root hash (the new tree does not extend the old)');
}

// ---- key epochs ----

class Keyring {
  constructor(roots) {
    this.epochs = new Map(roots.map((k) => [keyIdFor(k), { key: k, start: 0, end: null }]));
    if (!this.epochs.size) throw new Error('a keyring needs at least one trusted key');
    this.rotated = new Set();
  }

  apply(env) {
    if (env.payloadType !== ROTATION_PAYLOAD_TYPE) throw new Error(`rotation: payloadType ${env.payloadType}`);
    const payload = b64('rotation payload', env.payload);
    const p = JSON.parse(payload.toString('utf8'));
    const newKey = b64('new_public_key', p.new_public_key);
    if (newKey.length !== 32 || keyIdFor(newKey) !== p.new_key_id || !Number.isInteger(p.effective_seq) || p.effective_seq < 0) {
      throw new Error('rotation: new_public_key, new_key_id or effective_seq is invalid');
    }
    const old = this.epochs.get(p.old_key_id);
    if (!old) throw new Error(`rotation from ${p.old_key_id}, a key this keyring does not trust`);
    const sig = (env.signatures || []).find((s) => s.keyid === p.old_key_id);
    if (!sig || !ed25519Verify(old.key, pae(env.payloadType, payload), b64('rotation signature', sig.sig))) {
      throw new Error(`rotation record is not validly signed by the retiring key ${p.old_key_id}`);
    }
    if (old.end !== null) throw new Error(`${p.old_key_id} was already retired at seq ${old.end}`);
    if (p.effective_seq < old.start || p.new_key_id === p.old_key_id || this.rotated.has(p.new_key_id)) {
      throw new Error('rotation out of order');
    }
    old.end = p.effective_seq;
    this.epochs.set(p.new_key_id, { key: newKey, start: p.effective_seq, end: null });
    this.rotated.add(p.new_key_id);
  }

  keyFor(keyId, seq) {
    const e = this.epochs.get(keyId);
    return e && seq >= e.start && (e.end === null || seq < e.end) ? e.key : null;
  }

  keysForCheckpoint(size) {
    return [...this.epochs.values()].filter((e) => e.start <= size && (e.end === null || size <= e.end)).map((e) => e.key);
  }
}

// ---- C2SP signed note / tlog checkpoint ----

function noteKeyHash(name, raw) {
  return sha256(Buffer.from(name + '\n', 'utf8'), Buffer.from([1]), raw).subarray(0, 4);
}

function openCheckpoint(note, keys, origin) {
  if (typeof note !== 'string') throw new Error('a checkpoint note is a string');
  const cut = note.lastIndexOf('\n\n');
  if (cut < 0 || !note.endsWith('\n')) throw new Error('a note is its text, a blank line and signature lines');
  const text = note.slice(0, cut + 1);
  const lines = text.split('\n').slice(0, -1);
  if (lines.length < 3) throw new Error('a checkpoint has an origin, a tree size and a root hash line');
  const [name, sizeLine, rootLine] = lines;
  if (origin !== undefined && name !== origin) throw new Error(`checkpoint origin ${name}, expected ${origin}`);
  if (!/^(0|[1-9][0-9]*)$/.test(sizeLine)) throw new Error(`tree size ${sizeLine} is not a decimal number`);
  const root = b64('root hash', rootLine);
  if (root.length !== 32) throw new Error('root hash is not 32 bytes');
  const byHash = new Map(keys.map((k) => [noteKeyHash(name, k).toString('hex'), k]));
  const signers = [];
  for (const line of note.slice(cut + 2, -1).split('\n')) {
    if (!line.startsWith(SIG_PREFIX)) throw new Error(`not a signature line: ${line.slice(0, 40)}`);
    const rest = line.slice(SIG_PREFIX.length);
    const sp = rest.lastIndexOf(' ');
    const blob = b64('note signature', rest.slice(sp + 1));
    const key = rest.slice(0, sp) === name ? byHash.get(blob.subarray(0, 4).toString('hex')) : undefined;
    if (!key) continue;
    if (!ed25519Verify(key, Buffer.from(text, 'utf8'), blob.subarray(4))) throw new Error(`note signature by ${keyIdFor(key)} does not verify (the note was altered)`);
    signers.push(keyIdFor(key));
  }
  if (!signers.length) throw new Error(`note is not signed by a trusted key under the name ${name}`);
  return { origin: name, size: Number(sizeLine), root, signers };
}

function noteSize(note) {
  const m = /^[^\n]*\n(0|[1-9][0-9]*)\n/.exec(String(note));
  if (!m) throw new Error("a checkpoint's second line is its tree size");
  return Number(m[1]);
}

function hashes(field, list) {
  if (!Array.isArray(list) || list.length > 64) throw new Error(`${field}: a list of at most 64 base64 hashes`);
  return list.map((h) => {
    const b = b64(field, h);
    if (b.length !== 32) throw new Error(`${field}: a hash of ${b.length} bytes`);
    return b;
  });
}

function keyring(bundle, trusted) {
  const ring = new Keyring(trusted);
  for (const env of bundle.key_rotations || []) ring.apply(env);
  return ring;
}

function cpJson(cp) {
  return { origin: cp.origin, size: cp.size, root: cp.root.toString('base64'), signed_by: cp.signers };
}

function verifyInclusionBundle(bundle, trusted) {
  if (!bundle || bundle.format !== INCLUSION_FORMAT) throw new Error(`format: expected ${INCLUSION_FORMAT}`);
  if (typeof bundle.record !== 'string') throw new Error('record: the log line as a string is required');
  const line = Buffer.from(bundle.record, 'utf8');
  const evidenceId = 'sha256:' + crypto.createHash('sha256').update(line).digest('hex');
  if (bundle.evidence_id !== undefined && bundle.evidence_id !== evidenceId) {
    throw new Error(`evidence_id: the record's digest is ${evidenceId}, not ${bundle.evidence_id}`);
  }
  const ring = keyring(bundle, trusted);
  const env = JSON.parse(bundle.record);
  if (env.payloadType !== DECISION_PAYLOAD_TYPE) throw new Error(`record: payloadType ${env.payloadType} is not a Certus decision`);
  const payload = b64('record payload', env.payload);
  const decision = JSON.parse(payload.toString('utf8'));
  let signer = null;
  for (const s of env.signatures || []) {
    const key = ring.keyFor(s.keyid, decision.seq);
    if (!key) continue;
    if (!ed25519Verify(key, pae(env.payloadType, payload), b64('record signature', s.sig))) {
      throw new Error(`record: signature by ${s.keyid} does not verify (the decision was altered)`);
    }
    signer = s.keyid;
    break;
  }
  if (!signer) throw new Error(`record: not signed by a key trusted for seq ${decision.seq}`);
  if (decision.key_id !== signer) throw new Error("record: the decision's key_id is not its signer");
  const index = bundle.leaf_index;
  const size = bundle.tree_size;
  if (!Number.isInteger(index) || !Number.isInteger(size)) throw new Error('leaf_index and tree_size: integers are required');
  if (decision.seq !== index) throw new Error(`leaf_index ${index} is not the decision's seq ${decision.seq}`);
  const cp = openCheckpoint(bundle.checkpoint, ring.keysForCheckpoint(size));
  if (cp.size !== size) throw new Error(`tree_size ${size} is not the checkpoint's size ${cp.size}`);
  verifyInclusion(index, size, leafHash(line), hashes('inclusion_path', bundle.inclusion_path), cp.root);
  return {
    verified: true,
    evidence_id: evidenceId,
    decision_id: decision.decision_id,
    outcome: decision.outcome,
    seq: index,
    timestamp: decision.timestamp,
    signed_by: signer,
    checkpoint: cpJson(cp),
  };
}

function verifyConsistencyBundle(bundle, trusted) {
  if (!bundle || bundle.format !== CONSISTENCY_FORMAT) throw new Error(`format: expected ${CONSISTENCY_FORMAT}`);
  const ring = keyring(bundle, trusted);
  const old = openCheckpoint(bundle.old_checkpoint, ring.keysForCheckpoint(noteSize(bundle.old_checkpoint)));
  const neu = openCheckpoint(bundle.new_checkpoint, ring.keysForCheckpoint(noteSize(bundle.new_checkpoint)), old.origin);
  verifyConsistency(old.size, neu.size, old.root, neu.root, hashes('consistency_path', bundle.consistency_path));
  return { verified: true, old: cpJson(old), new: cpJson(neu) };
}

function verifyBundle(bundle, trusted) {
  return bundle && bundle.format === CONSISTENCY_FORMAT ? verifyConsistencyBundle(bundle, trusted) : verifyInclusionBundle(bundle, trusted);
}

module.exports = { leafHash, nodeHash, verifyInclusion, verifyConsistency, openCheckpoint, Keyring, verifyInclusionBundle, verifyConsistencyBundle, verifyBundle };
