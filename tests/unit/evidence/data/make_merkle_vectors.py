"""Regenerate ``merkle_vectors_pymerkle.json``: RFC 9162 roots, inclusion and consistency proofs
computed by an independent published implementation, pymerkle 7.0.0 (PyPI, RFC 9162 hashing with
``security=True``), over the RFC 6962 reference test leaves and over 70 pseudo-random leaves (consistency
proofs: pymerkle's format is not RFC 9162's, so the suite checks ours against these roots).

    python -m venv /tmp/pm && /tmp/pm/bin/pip install pymerkle==7.0.0
    /tmp/pm/bin/python tests/unit/evidence/data/make_merkle_vectors.py > tests/unit/evidence/data/merkle_vectors_pymerkle.json

Not run by the suite (pymerkle is not a dependency); the suite checks sidecar.evidence.merkle
against the file it wrote.
"""

import hashlib
import json
import warnings

from pymerkle import InmemoryTree

warnings.simplefilter("ignore")

RFC6962_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]


def vectors(leaves: list[bytes], every_index: bool) -> dict:
    t = InmemoryTree(algorithm="sha256")
    for d in leaves:
        t.append_entry(d)
    n = len(leaves)
    out = {"leaves": [d.hex() for d in leaves], "roots": {}, "inclusion": []}
    for size in range(1, n + 1):
        out["roots"][str(size)] = t.get_state(size).hex()
        for index in range(size) if every_index else sorted({0, size // 3, size // 2, size - 1}):
            # pymerkle is 1-based and puts the leaf hash itself first in the path
            path = t.prove_inclusion(index + 1, size).serialize()["path"][1:]
            out["inclusion"].append({"index": index, "size": size, "path": path})
    return out


seeded = [hashlib.sha256(b"certus-%d" % i).digest()[: 1 + i % 32] for i in range(70)]
vecs = {"generator": "pymerkle 7.0.0", "rfc6962": vectors(RFC6962_LEAVES, True), "seeded70": vectors(seeded, False)}
print(json.dumps(vecs, indent=0, sort_keys=True))
