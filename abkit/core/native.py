"""The C twins of three hot-path steps (``abkit/core/_speedups.c``), or ``None`` when the
extension was not built (no C compiler or OpenSSL headers at install): then
:mod:`abkit.core.hashing`, :mod:`abkit.core.recent` and :mod:`abkit.core.limits` use their
pure-Python twins, which give the same answers more slowly. The test suite requires the build.
"""

from __future__ import annotations

try:
    from abkit.core import _speedups as speedups
except ImportError:  # pragma: no cover -- the test suite requires the native build
    speedups = None  # type: ignore[assignment]

__all__ = ["speedups"]
