"""The generated protobuf modules, in one place (regenerated first in a checkout whose protos changed)."""

from __future__ import annotations

from certus.client import protogen

protogen.ensure()

from certus.evaluate.v1 import evaluate_pb2 as pb  # noqa: E402
from certus.evaluate.v1 import evaluate_pb2_grpc as pb_grpc  # noqa: E402
from certus.evaluate.v1 import integrity_pb2 as ipb  # noqa: E402
from certus.evaluate.v1 import integrity_pb2_grpc as ipb_grpc  # noqa: E402

__all__ = ["pb", "pb_grpc", "ipb", "ipb_grpc"]
