"""Numbers in sentences: the one way abkit writes a duration and a signed effect in plain text.

Decision reasons (:mod:`abkit.core.reasons`) and the reports (:mod:`abkit.report`) both use
these, so "7.0 d" reads the same in the audit trail and on the page.
"""

from __future__ import annotations

import math


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1.5 h``, ``7.0 d``."""
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def signed(value: float, relative: bool) -> str:
    """``+2.31%`` (a relative lift) or ``+0.0123`` (four significant digits); ``±inf``, ``n/a``."""
    if not math.isfinite(value):
        return "-inf" if value < 0 else "+inf" if value > 0 else "n/a"
    return f"{value:+.2%}" if relative else f"{value:+.4g}"


def magnitude(value: float, relative: bool) -> str:
    """A size without its sign: ``5.00%``, ``0.01``."""
    return signed(value, relative).lstrip("+")
