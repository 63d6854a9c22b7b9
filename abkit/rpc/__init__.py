"""The gRPC adapter: thin servicers (:mod:`~abkit.rpc.servicer`), proto <-> core conversion
(:mod:`~abkit.rpc.convert`), tracing and errors (:mod:`~abkit.rpc.tracing`), and
:func:`abkit.rpc.server.build_server`, which returns an unstarted server bound to any port."""
