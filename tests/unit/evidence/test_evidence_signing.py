"""Ed25519 known answers (RFC 8032 §7.1 TEST 1-3) and a DSSE envelope from the log verified by an
independent implementation (pyca/cryptography) over PAE bytes rebuilt here from the spec."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Callable

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from evidence_samples import sample_decision

from certus.sidecar.config import EvidenceConfig
from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.signing import SignatureError, SigningKey, VerifyKey

RFC8032 = [
    (  # TEST 1
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (  # TEST 2
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (  # TEST 3
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032, ids=["test1", "test2", "test3"])
def test_rfc8032_known_answers(seed: str, public: str, message: str, signature: str) -> None:
    key = SigningKey(bytes.fromhex(seed))
    assert key.verify_key.public_bytes.hex() == public
    assert key.sign(bytes.fromhex(message)).hex() == signature
    VerifyKey(bytes.fromhex(public)).verify(bytes.fromhex(message), bytes.fromhex(signature))
    with pytest.raises(SignatureError):
        VerifyKey(bytes.fromhex(public)).verify(bytes.fromhex(message) + b"x", bytes.fromhex(signature))


def test_key_id_is_sha256_prefix_of_public_key() -> None:
    key = SigningKey(bytes.fromhex(RFC8032[0][0]))
    assert key.key_id == "ed25519:" + hashlib.sha256(bytes.fromhex(RFC8032[0][1])).hexdigest()[:16]
    assert "9d61b19d" not in repr(key)


def _pae(payload_type: bytes, body: bytes) -> bytes:
    # DSSE v1: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, lengths as ASCII decimal.
    return b" ".join([b"DSSEv1", str(len(payload_type)).encode(), payload_type, str(len(body)).encode(), body])


def test_log_envelope_verifies_with_an_independent_implementation(
    tmp_path: Path, key: SigningKey, log_cfg: Callable[..., EvidenceConfig]
) -> None:
    async def run() -> str:
        log = EvidenceLog.open(log_cfg(), key)
        evidence_id, _ = await log.append(sample_decision(0))
        await log.close()
        return evidence_id

    evidence_id = asyncio.run(run())
    line = (tmp_path / "evidence" / "segment-000001.jsonl").read_bytes().rstrip(b"\n")
    assert evidence_id == "sha256:" + hashlib.sha256(line).hexdigest()
    env = json.loads(line)
    assert env["payloadType"] == "application/vnd.certus.decision+json"
    body = base64.b64decode(env["payload"])
    sig = base64.b64decode(env["signatures"][0]["sig"])
    assert env["signatures"][0]["keyid"] == key.key_id

    pub = Ed25519PublicKey.from_public_bytes(key.verify_key.public_bytes)
    pub.verify(sig, _pae(env["payloadType"].encode(), body))  # raises if bad

    payload = json.loads(body)
    assert (payload["seq"], payload["prev_hash"], payload["key_id"]) == (0, "sha256:" + "0" * 64, key.key_id)
    # the payload bytes are canonical JSON: sorted keys, no whitespace
    assert body == json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    tampered = body.replace(b'"outcome":"pass"', b'"outcome":"fail"')
    assert tampered != body
    with pytest.raises(InvalidSignature):
        pub.verify(sig, _pae(env["payloadType"].encode(), tampered))
