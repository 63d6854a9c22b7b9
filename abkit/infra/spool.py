"""A bounded on-disk spool: where exposures and events wait while the store is unreachable.

Batches are appended as one JSON line each to segment files (``000001.spool``, ...) and
``fsync``'d before ``append`` returns, so a spooled batch survives a crash or a restart; a new
process replays what an old one left. Segments are replayed oldest first and deleted only after
every batch in them has been written; the store's inserts are idempotent (first exposure per
experiment and unit, one event per id), so a segment replayed twice -- after a crash in the
middle of a replay -- stores nothing twice.

When the spool reaches ``max_bytes`` it refuses new batches (:class:`SpoolFull`) instead of
dropping old ones: an accepted record is never thrown away silently. The writer then keeps
batches in memory until its queue is full, and from there on refuses new records -- a Track
call answers UNAVAILABLE so the client retries later with the same event id (back-pressure),
while Assign keeps answering and counts the exposures it could not log.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

SUFFIX = ".spool"


class SpoolFull(Exception):
    """The spool holds ``max_bytes`` already."""


class SpoolInUse(Exception):
    """Another process holds the spool directory."""


class Spool(Generic[T]):
    def __init__(
        self,
        directory: str | Path,
        *,
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
        max_bytes: int = 1 << 30,
        segment_bytes: int = 4 << 20,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # One process per spool: two writers appending to and deleting the same segments would
        # replay each other's batches out of order.
        self._lock_file = _lock(self.directory)  # held for life
        self._encode = encode
        self._decode = decode
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._current: Path | None = None
        self._bytes = sum(p.stat().st_size for p in self._segments())

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def empty(self) -> bool:
        with self._lock:
            return not self._segments()

    def append(self, batch: Sequence[T]) -> None:
        """Write ``batch`` durably (fsync) at the end of the spool, or raise :class:`SpoolFull`."""
        line = (json.dumps([self._encode(r) for r in batch], separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._bytes + len(line) > self._max_bytes:
                raise SpoolFull(f"spool {self.directory} holds {self._bytes} bytes")
            current = self._current
            if current is None or current.stat().st_size + len(line) > self._segment_bytes:
                current = self._new_segment()
            with open(current, "ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self._bytes += len(line)

    def _new_segment(self) -> Path:
        segments = self._segments()
        number = int(segments[-1].stem) + 1 if segments else 1
        path = self.directory / f"{number:08d}{SUFFIX}"
        path.touch()
        _fsync_directory(self.directory)
        self._current = path
        return path

    def oldest(self) -> tuple[Path, list[list[T]]] | None:
        """The oldest segment and its batches; the segment is sealed (no more appends)."""
        with self._lock:
            segments = self._segments()
            if not segments:
                return None
            oldest = segments[0]
            if oldest == self._current:
                self._current = None
        return oldest, self._read(oldest)

    def _read(self, path: Path) -> list[list[T]]:
        batches = []
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    records = json.loads(line)
                except ValueError:
                    # A torn last line from a crash during append: that batch was never
                    # reported as spooled, so skipping it loses nothing that was promised.
                    log.warning("spool %s line %d is incomplete; skipped", path, number)
                    continue
                batches.append([self._decode(r) for r in records])
        return batches

    def record_count(self) -> int:
        """Records in the spool (reads every segment: for start-up, not the hot path)."""
        with self._lock:
            segments = self._segments()
        return sum(len(batch) for path in segments for batch in self._read(path))

    def close(self) -> None:
        """Release the directory lock (the spooled batches stay for the next process)."""
        self._lock_file.close()

    def remove(self, path: Path) -> None:
        with self._lock:
            size = path.stat().st_size
            path.unlink()
            _fsync_directory(self.directory)
            self._bytes -= size


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def adopt(target: str | Path, orphan: str | Path) -> int:
    """Move the segments of the spool ``orphan`` (left by a process that is gone) to the end of
    the spool ``target``, oldest first; the number of segments moved.

    Used when fewer server processes start than last time: process ``i`` spools under its own
    directory, and a directory no process of this generation will open would otherwise never be
    replayed. Both spools must be unused -- call before opening ``target``. Raises
    :class:`SpoolInUse` if either is held by a live process (then nothing moves). Records keep
    their order within the orphan; order across the two spools never mattered (each process's
    records are independent, and the store's inserts are idempotent).
    """
    target, orphan = Path(target), Path(orphan)
    target.mkdir(parents=True, exist_ok=True)
    with _locked(target), _locked(orphan):
        moving = sorted(orphan.glob(f"*{SUFFIX}"))
        present = sorted(target.glob(f"*{SUFFIX}"))
        number = int(present[-1].stem) if present else 0
        for path in moving:
            number += 1
            path.rename(target / f"{number:08d}{SUFFIX}")
        if moving:
            _fsync_directory(target)
            _fsync_directory(orphan)
    return len(moving)


def _lock(directory: Path) -> IO[str]:
    """The spool's lock file, locked (exclusively, without waiting); close it to release."""
    handle = open(directory / ".lock", "a")  # noqa: SIM115 -- the caller closes it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpoolInUse(
            f"the spool {directory} is used by another abkit process; give each "
            "process its own ABKIT_SPOOL_DIR"
        ) from None
    return handle


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with _lock(directory):
        yield
