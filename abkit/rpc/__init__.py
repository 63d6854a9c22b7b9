"""The gRPC adapter: thin servicers, proto <-> core conversion, ``build_server()``."""

from abkit.rpc.server import GrpcServer, build_server

__all__ = ["GrpcServer", "build_server"]
