"""The generated protobuf modules (shipped by the ``certus-client`` distribution), in one place.
Nothing below the server imports this."""

from __future__ import annotations

from certus.client.protos import ipb, ipb_grpc, pb, pb_grpc

__all__ = ["pb", "pb_grpc", "ipb", "ipb_grpc"]
