"""Server reflection that also resolves method symbols (``package.Service.Method``).

ghz and grpcurl ask reflection for the file containing the full method symbol; Python's default
descriptor pool only knows services, messages, enums and extensions (grpc/grpc#34743,
bojand/ghz#419). This pool falls back from a method symbol to its service.
"""

from __future__ import annotations

from typing import Any, Sequence

from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection


class MethodResolvingPool:
    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()

    def FindFileContainingSymbol(self, symbol: str) -> Any:  # noqa: N802 (protobuf's name)
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            if service:
                desc = self._pool.FindServiceByName(service)
                if method in desc.methods_by_name:
                    return desc.file
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable(server: Any, service_names: Sequence[str]) -> None:
    names = (*service_names, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server, pool=MethodResolvingPool())
