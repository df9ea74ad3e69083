"""The generated protobuf modules, in one place. Nothing below the server imports this."""

from __future__ import annotations

import sys

from sidecar import protogen

protogen.ensure()
if str(protogen.GEN_DIR) not in sys.path:
    sys.path.insert(0, str(protogen.GEN_DIR))

from certus.evaluate.v1 import evaluate_pb2 as pb  # noqa: E402
from certus.evaluate.v1 import evaluate_pb2_grpc as pb_grpc  # noqa: E402
from certus.evaluate.v1 import integrity_pb2 as ipb  # noqa: E402
from certus.evaluate.v1 import integrity_pb2_grpc as ipb_grpc  # noqa: E402

__all__ = ["pb", "pb_grpc", "ipb", "ipb_grpc"]
