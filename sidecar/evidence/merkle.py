"""The Merkle tree over the evidence log, with RFC 9162 (Certificate Transparency v2) hashing.

Leaf ``i`` is the log line of the record with ``seq == i`` (the canonical DSSE envelope JSON, no
newline: the bytes whose SHA-256 is the ``evidence_id``). ``leaf_hash = SHA-256(0x00 || line)``,
``node_hash = SHA-256(0x01 || left || right)`` and the tree over ``n`` leaves splits at the largest
power of two below ``n`` (RFC 9162 §2.1.1). Proofs are generated here (§2.1.3.1 ``PATH``, §2.1.4.1
``PROOF``) and verified by :mod:`certus.client.transparency` (§2.1.3.2, §2.1.4.2) exactly as the
RFC writes them, so any CT library checks them too.

:class:`Frontier` is the compact range of a growing tree (one root per complete power-of-two
subtree, O(log n)): the evidence writer extends it per record and signs its root in checkpoints
without keeping the leaves. Proof generation takes a ``subtree(lo, hi)`` function; :class:`Leaves`
gives one over leaf hashes in memory (``prove`` reads them from the log), optionally with known
subtree roots below a starting index (the frontier of an older checkpoint), which is all a
consistency proof from that checkpoint needs.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

# hashing and verification live in the light client (one implementation for the sidecar, the
# receiver and the standalone verifier); generation and the growing tree live here
from certus.client.transparency import (
    EMPTY_ROOT,
    HASH_SIZE,
    ProofError,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "Leaves",
    "ProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

SubtreeFn = Callable[[int, int], bytes]  # MTH(D[lo:hi])

def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (already hashed with :func:`leaf_hash`)."""
    return Leaves(leaf_hashes).root(len(leaf_hashes))


class Frontier:
    """The compact range ``[0, size)``: roots of its maximal complete subtrees, left to right."""

    __slots__ = ("size", "nodes")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if len(nodes) != bin(size).count("1"):
            raise ProofError(f"a frontier of size {size} has {bin(size).count('1')} nodes, got {len(nodes)}")
        self.size = size
        self.nodes = list(nodes)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash: merge equal-sized subtrees as a binary counter carries."""
        h = leaf
        size = self.size
        while size & 1:
            h = node_hash(self.nodes.pop(), h)
            size >>= 1
        self.nodes.append(h)
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1]
        for h in reversed(self.nodes[:-1]):
            r = node_hash(h, r)
        return r

    def spans(self) -> list[tuple[int, int]]:
        """``(lo, hi)`` of each node, left to right."""
        out, lo = [], 0
        for bit in reversed(range(self.size.bit_length())):
            if self.size >> bit & 1:
                out.append((lo, lo + (1 << bit)))
                lo += 1 << bit
        return out

    def copy(self) -> "Frontier":
        return Frontier(self.size, self.nodes)


class Leaves:
    """``subtree(lo, hi)`` over leaf hashes ``leaf_hashes[i - base]`` for ``i >= base``; subtrees
    that lie below ``base`` must be among ``known`` (``{(lo, hi): root}``, e.g. a frontier's)."""

    def __init__(self, leaf_hashes: Sequence[bytes], base: int = 0, known: dict[tuple[int, int], bytes] | None = None) -> None:
        self._leaves = leaf_hashes
        self._base = base
        self._known = dict(known or {})

    @classmethod
    def after(cls, frontier: Frontier, leaf_hashes: Sequence[bytes]) -> "Leaves":
        """Leaves from ``frontier.size`` on, with the frontier's subtrees known below it."""
        return cls(leaf_hashes, frontier.size, dict(zip(frontier.spans(), frontier.nodes)))

    @property
    def size(self) -> int:
        return self._base + len(self._leaves)

    def subtree(self, lo: int, hi: int) -> bytes:
        if hi > self.size or lo < 0 or lo >= hi:
            raise ProofError(f"subtree [{lo}, {hi}) is outside the {self.size} known leaves")
        got = self._known.get((lo, hi))
        if got is not None:
            return got
        if lo < self._base:
            raise ProofError(f"subtree [{lo}, {hi}) lies below the first held leaf {self._base} and is not known")
        if hi - lo == 1:
            return self._leaves[lo - self._base]
        k = _split(hi - lo)
        h = node_hash(self.subtree(lo, lo + k), self.subtree(lo + k, hi))
        if k >= 64 and (hi - lo) & (hi - lo - 1) == 0:  # remember complete subtrees of >= 128 leaves
            self._known[(lo, hi)] = h
        return h

    def root(self, size: int) -> bytes:
        return EMPTY_ROOT if size == 0 else self.subtree(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return inclusion_proof(index, size, self.subtree)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return consistency_proof(old_size, new_size, self.subtree)


def inclusion_proof(index: int, size: int, subtree: SubtreeFn) -> list[bytes]:
    """RFC 9162 §2.1.3.1 ``PATH(index, D[size])``, leaf-to-root order."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    # walk down, collecting siblings root-first, then reverse
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo = lo + k
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, subtree: SubtreeFn) -> list[bytes]:
    """RFC 9162 §2.1.4.1 ``PROOF(old_size, D[new_size])`` (empty when the sizes are equal or the
    old tree is empty)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    out: list[bytes] = []

    def sub(m: int, lo: int, hi: int, whole: bool) -> None:
        if lo + m == hi:
            if not whole:
                out.append(subtree(lo, hi))
            return
        k = _split(hi - lo)
        if m <= k:
            sub(m, lo, lo + k, whole)
            out.append(subtree(lo + k, hi))
        else:
            sub(m - k, lo + k, hi, False)
            out.append(subtree(lo, lo + k))

    sub(old_size, 0, new_size, True)
    return out
