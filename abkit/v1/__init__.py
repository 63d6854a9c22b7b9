"""Generated protobuf and gRPC stubs of ``proto/abkit/v1`` (``make proto``; never edit by hand)."""
