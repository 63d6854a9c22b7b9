"""Deterministic, cross-language bucketing (docs/design.md, "Hashing").

``bucket(seed, unit_id) = uint64_be(sha256(utf8(seed + ":" + unit_id))[0:8]) / 2**64``

The result is a float in [0, 1). It is the one function every client, in every language, must
reproduce bit for bit; ``tests/fixtures/hash_vectors.json`` pins it. Python's ``hash()`` is never
used: it is salted per process.

Independent questions use independent seeds, so the answer to one never correlates with another:

* ``"{salt}:coverage"`` -- is the unit in the experiment at all (coverage)?
* ``salt``               -- which arm, from the cumulative arm weights?
* ``"layer:{key}"``      -- which segment of a mutually exclusive layer?
* ``"holdout:{key}"``    -- is the unit held out of every experiment that uses the holdout?

Because coverage and arm use different seeds, raising coverage only *adds* units (those whose
coverage bucket lies between the old and the new coverage); their arm bucket, and therefore the arm
of every unit already in, is unchanged.

Bounds: a unit is inside a share ``p`` when ``bucket < p``; a bound of exactly 1.0 admits every
unit (a digest whose first 8 bytes exceed ``2**64 - 2**10`` rounds to a bucket of exactly 1.0 in
IEEE double arithmetic, probability 2**-54, and "100%" must still mean everyone).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from abkit.core.native import speedups

Digest = Callable[[str], bytes]
"""A seed's digest function: ``unit_id -> sha256(utf8(seed + ":" + unit_id)).digest()``."""

sha256 = hashlib.sha256

NATIVE = speedups is not None
"""True when assignment hashes with the C digest; False: hashlib (same bytes, ~4x the cost)."""


def seeded(seed: str, *, native: bool = NATIVE) -> Digest:
    """The digest function of ``seed``: the seed is hashed once, not on every call.

    Native (``abkit.core._speedups``): the SHA-256 state after ``utf8(seed + ":")`` in a C struct,
    copied on the stack and fed the unit's UTF-8 per call -- about 60 ns with OpenSSL's SHA-256,
    against 280 ns for the same through ``hashlib`` (copy the state object, ``update``,
    ``digest``: three calls, each allocating; ``timeit``, CPython 3.11.7, OpenSSL 3.0 on this
    project's machine). Without the extension, that ``hashlib`` path: same bytes (SHA-256 is a
    stream). ``native=False`` asks for it (the tests compare the two).
    """
    if not isinstance(seed, str):  # bytes would hash as their repr on the hashlib path
        raise TypeError(f"seed must be str, not {type(seed).__name__}")
    if native:
        if speedups is None:
            raise RuntimeError(
                "abkit.core._speedups is not built: reinstall abkit with a C compiler"
            )
        digest: Digest = speedups.Seeded(seed)
        return digest
    copy = sha256(f"{seed}:".encode()).copy

    def python_digest(unit_id: str) -> bytes:
        h = copy()
        h.update(unit_id.encode())
        return h.digest()

    return python_digest


HASH_VERSION = 1
"""The only hashing function defined so far; stored with each experiment."""

_TWO_POW_64 = float(2**64)


def bucket(seed: str, unit_id: str) -> float:
    """Return the unit's bucket in [0, 1) for ``seed``."""
    digest = sha256(f"{seed}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _TWO_POW_64


def below(bound: float) -> bytes:
    """A 32-byte threshold ``t`` with ``sha256(...).digest() < t  <=>  bucket < bound``.

    The hot path compares raw digests against precomputed thresholds (a ``memcmp``) instead of
    converting every digest to a float. Exactness: ``bucket = float(x) / 2**64`` for the 64-bit
    integer ``x`` read from the digest, and ``float()`` rounds, so ``bucket < bound`` holds
    exactly for ``x < T`` where ``T`` is the smallest ``x`` with ``float(x) / 2**64 >= bound``,
    found here by bisection. A digest is below ``T.to_bytes(8) + 24 zero bytes`` iff its first 8
    bytes, read as an integer, are below ``T``.

    A bound of 1.0 or more admits every unit, including the one in 2**54 whose bucket rounds up to
    exactly 1.0: "coverage 1.0" must mean everyone.
    """
    if bound >= 1.0:
        return _ABOVE_EVERY_DIGEST
    if bound <= 0.0:
        return bytes(32)
    lo, hi = 0, 2**64  # invariant: float(lo)/2**64 < bound (or lo == 0), float(hi)/2**64 >= bound
    while lo < hi:
        mid = (lo + hi) // 2
        if mid / _TWO_POW_64 >= bound:
            hi = mid
        else:
            lo = mid + 1
    if lo >= 2**64:
        return _ABOVE_EVERY_DIGEST
    return lo.to_bytes(8, "big") + bytes(24)


_ABOVE_EVERY_DIGEST = b"\xff" * 32 + b"\x01"  # longer, and equal on the shared prefix: greater


def pseudonym(key: bytes, unit_id: str) -> str:
    """``HMAC-SHA256(key, utf8(unit_id))`` as hex: how a unit id is stored with pseudonymisation.

    Keyed, so the stored value cannot be reversed or recomputed without the key; deterministic, so
    a unit's exposures and events still join. Assignment never sees it: buckets hash the raw id.
    """
    return hmac.new(key, unit_id.encode(), "sha256").hexdigest()


def coverage_seed(salt: str) -> str:
    return f"{salt}:coverage"


def layer_seed(layer_key: str) -> str:
    return f"layer:{layer_key}"


def holdout_seed(holdout_key: str) -> str:
    return f"holdout:{holdout_key}"
