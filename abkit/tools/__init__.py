"""Tools around the service: :mod:`~abkit.tools.demo` (``abkit demo``) and
:mod:`~abkit.tools.loadtest` (``abkit loadtest``)."""
