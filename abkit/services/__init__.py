"""Use cases: each sequences the pure core and the ports, one module per use case.

* :mod:`~abkit.services.assignment` -- Assign and Track (:mod:`~abkit.services.config` holds
  the compiled config they answer from);
* :mod:`~abkit.services.experiments` -- apply, list, start, pause;
* :mod:`~abkit.services.decisions` -- looks, decisions and manual promote/rollback;
* :mod:`~abkit.services.registry` -- the external model registry (MLflow) follows the
  decisions: versions checked at apply, aliases moved through the outbox;
* :mod:`~abkit.services.results` -- what was decided, for people and programs
  (:mod:`~abkit.services.views` is its read model);
* :mod:`~abkit.services.privacy` -- erasure and retention.

No SQL, no gRPC, no Flask here (``tests/unit/test_architecture.py``). They are built once, in
:class:`abkit.runtime.Runtime`, and shared by the CLI, the web app and the gRPC server.
"""
