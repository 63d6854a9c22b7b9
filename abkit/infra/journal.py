"""The local journal: where an accepted exposure or event becomes durable before the answer.

**Group commit.** :meth:`Journal.append` only buffers its rows and returns a :class:`Receipt`;
one flusher thread writes everything buffered since its last write with one ``write`` and one
``fdatasync``, then wakes the waiters. Consecutive appends of one kind in a group become one
record (up to :data:`MERGE_BYTES`): a consumer reads, checks and writes a group's rows as one
piece instead of one per call. Concurrent calls share the fsync: the busier the server, the
more each fsync carries (the classic database log). Under concurrency -- the last group held
:data:`COMMIT_SIBLINGS` appends or more -- the flusher first waits
``commit_delay`` for the calls arriving meanwhile, as PostgreSQL's ``commit_delay`` and
``commit_siblings`` do: fewer, fuller groups mean fewer thread wake-ups on a busy server; a
lone call is never delayed. A caller that must not answer before its rows are durable
waits on its receipt (:meth:`Receipt.wait`).

**Format.** Segments ``00000001.journal``, ``00000002.journal``, ... of framed records::

    b"AJ" | kind (1 byte) | rows (u32) | length (u32) | crc32 of the payload (u32) | payload

``kind`` is a :class:`~abkit.core.rows.RowKind`; the payload is that kind's rows as
:mod:`abkit.core.rows` text. A record never spans two segments.

**Consumers** (the database drain, the stream publisher) read durable records after a
:class:`Position` and, once they handled them, call :meth:`Journal.consumed`: the checkpoint
file is replaced atomically and segments wholly before it are deleted. What a consumer handled
but had not yet checkpointed when it died is read again after a restart; every consumer writes
idempotently (the store's primary keys, the stream's message ids), so a repeat stores nothing
twice.

**Crashes.** A record torn by a crash in the middle of a write was never durable -- its fsync
never returned, so no caller was told it was recorded -- and opening the journal truncates it.

**Bounded.** When the bytes not yet consumed reach ``max_bytes``, :meth:`Journal.append` raises
:class:`JournalFull` (back-pressure: the caller answers UNAVAILABLE rather than losing rows).
One process per journal directory (a lock file). Without a directory (``ABKIT_SPOOL_DIR=off``)
records are kept in memory only -- durable for nobody, which the documentation says.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple, Protocol

from abkit.core.rows import RowKind
from abkit.errors import StoreUnavailableError

log = logging.getLogger(__name__)

COMMIT_SIBLINGS = 4
"""Appends the last group must have held for the next one to wait ``commit_delay``."""
SUFFIX = ".journal"
CHECKPOINT = "checkpoint"
IDENTITY = "id"
MAGIC = b"AJ"
_HEADER = struct.Struct(">2sBIII")  # magic, kind, rows, length, crc32
HEADER_SIZE = _HEADER.size
READ_CHUNK = 1 << 20
FLUSH_INTERVAL = 0.005
"""Appends nobody waits for are made durable within about this long."""
MERGE_BYTES = 256 * 1024
"""Consecutive appends of one kind in a group share a record up to this size (an append larger
than it is a record of its own). At most the stream's message size: the stream recorder
forwards records as messages."""


class JournalFull(StoreUnavailableError):
    """The journal holds ``max_bytes`` not yet consumed: retry later (back-pressure)."""


class JournalFailed(StoreUnavailableError):
    """Writing or syncing the journal failed; nothing more is accepted until a restart."""


class JournalInUse(StoreUnavailableError):
    """Another process holds the journal directory."""


class Position(NamedTuple):
    """A point in the journal: a segment number and a byte offset in it (orderable)."""

    segment: int
    offset: int


START = Position(1, 0)


@dataclass(frozen=True, slots=True)
class Record:
    kind: RowKind
    rows: int
    payload: bytes
    end: Position
    """Where the next record starts: what a consumer checkpoints after handling this one."""


@dataclass(frozen=True, slots=True)
class JournalStats:
    appended_rows: int
    durable_rows: int
    consumed_rows: int
    backlog_rows: int
    backlog_bytes: int
    pending_bytes: int
    syncs: int
    failed: bool


class Group:
    """The records of one group commit, finished once: durable, or failed. Shared by the journal
    and the stream sink (:mod:`abkit.infra.stream_recorder`). A thread waits on ``done``; an
    event loop registers a callback (:meth:`on_done`), run by the committing thread."""

    __slots__ = ("_callbacks", "_lock", "done", "durable")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.durable = False
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] | None = []

    def finish(self, durable: bool) -> None:
        """Called once by the committer; the callbacks run here and must not call back into it."""
        with self._lock:
            self.durable = durable
            self.done.set()
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:  # a waiter's failure must never stop the committer
                log.exception("a group commit callback failed")

    def finished(self) -> bool:
        return self.done.is_set()

    def on_done(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the group is finished: now if it is, else in the committer."""
        with self._lock:
            if self._callbacks is not None:
                self._callbacks.append(callback)
                return
        callback()


class _Committer(Protocol):
    def _hurry(self) -> None: ...


class Receipt:
    """Tells when an append is durable: its group's commit, hurried along by a waiter."""

    __slots__ = ("_committer", "group")

    def __init__(self, committer: _Committer, group: Group) -> None:
        self._committer = committer
        self.group = group

    def hurry(self) -> None:
        """Somebody waits: commit the open group now rather than at the next interval."""
        if not self.group.finished():
            self._committer._hurry()

    def wait(self, timeout: float) -> bool:
        """Block until the record is durable; False on timeout or when the commit failed."""
        if not self.group.finished():
            self.hurry()
            self.group.done.wait(timeout)
        return self.group.durable


def frame(kind: RowKind, rows: int, payload: bytes) -> bytes:
    return _HEADER.pack(MAGIC, kind, rows, len(payload), zlib.crc32(payload)) + payload


class _Run:
    """Consecutive appends of one kind in the open group: one record when written."""

    __slots__ = ("kind", "parts", "rows", "size")

    def __init__(self, kind: RowKind, payload: bytes, rows: int) -> None:
        self.kind = kind
        self.parts = [payload]
        self.rows = rows
        self.size = len(payload)

    def add(self, payload: bytes, rows: int) -> None:
        self.parts.append(payload)
        self.rows += rows
        self.size += len(payload)

    def frame(self) -> bytes:
        return frame(self.kind, self.rows, b"".join(self.parts))


def parse(data: bytes, segment: int, start: int = 0) -> tuple[list[Record], int]:
    """The whole records in ``data`` (a segment's bytes from offset ``start``), and the offset
    where the valid part ends (a torn or corrupt tail stops the parse)."""
    records: list[Record] = []
    at = 0
    while at + HEADER_SIZE <= len(data):
        magic, kind, rows, length, crc = _HEADER.unpack_from(data, at)
        end = at + HEADER_SIZE + length
        if magic != MAGIC or end > len(data) or kind not in (1, 2):
            break
        payload = bytes(data[at + HEADER_SIZE : end])
        if zlib.crc32(payload) != crc:
            break
        records.append(Record(RowKind(kind), rows, payload, Position(segment, start + end)))
        at = end
    return records, start + at


class Journal:
    """An append-only, group-committed, bounded log of encoded rows (see the module docstring)."""

    def __init__(
        self,
        directory: str | Path | None,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 16 << 20,
        sync: bool = True,
        commit_delay: float = 0.0,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._sync = sync
        self._commit_delay = commit_delay
        self._lock = threading.Lock()
        # One lock, three reasons to wake: the flusher (work to write), receipt waiters and
        # readers (something became durable), and flush() callers (a consumer moved on).
        self._work = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._consumption = threading.Condition(self._lock)
        self._pending: list[_Run] = []
        self._pending_bytes = 0
        self._pending_rows = 0
        self._pending_appends = 0  # appends in the open group
        self._seq = 0  # appends so far
        self._appended_rows = 0
        self._durable_rows = 0
        self._consumed_rows = 0
        self._backlog_rows = 0  # durable, not yet consumed
        self._backlog_bytes = 0
        self._syncs = 0
        self._failure: BaseException | None = None
        self._closing = False
        self._group = Group()  # the records appended since the last flush
        self._urgent = False
        self._last_flush = 0.0
        self._last_group = 0  # appends in the last group written
        self._thread: threading.Thread | None = None
        # File mode: the active segment; memory mode: the records themselves.
        self._segment = 1
        self._segment_size = 0
        self._file: IO[bytes] | None = None
        self._lock_file: IO[str] | None = None
        self._memory: list[Record] = []
        self.identity = uuid.uuid4().hex[:12]
        """A name for this journal that stays the same across restarts (message ids of what
        it forwards to a stream derive from it and the record's position)."""
        self._durable_end = START
        self._checkpoint = START
        self._sizes: dict[int, int] = {}  # segment -> bytes, for the backlog

    # -- opening ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the directory, recover the tail and the checkpoint, start the flusher."""
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = _lock(self.directory)
            self.identity = _identity(self.directory / IDENTITY)
            self._recover()
        self._thread = threading.Thread(target=self._run, name="abkit-journal", daemon=True)
        self._thread.start()

    def _segments(self) -> list[int]:
        assert self.directory is not None
        return sorted(int(p.stem) for p in self.directory.glob(f"*{SUFFIX}") if p.stem.isdigit())

    def _path(self, segment: int) -> Path:
        assert self.directory is not None
        return self.directory / f"{segment:08d}{SUFFIX}"

    def _recover(self) -> None:
        checkpoint = _read_checkpoint(self.directory / CHECKPOINT)  # type: ignore[operator]
        segments = [s for s in self._segments() if s >= checkpoint.segment]
        for stale in (s for s in self._segments() if s < checkpoint.segment):
            self._path(stale).unlink()
        last_end = checkpoint
        for segment in segments:
            data = self._path(segment).read_bytes()
            start = checkpoint.offset if segment == checkpoint.segment else 0
            records, valid = parse(data[start:], segment, start)
            if valid < len(data):
                log.warning(
                    "journal %s: %d bytes of a torn or corrupt record at the end of segment "
                    "%d were never durable; truncated",
                    self.directory, len(data) - valid, segment,
                )  # fmt: skip
                with open(self._path(segment), "r+b") as handle:
                    handle.truncate(valid)
                    os.fsync(handle.fileno())
            self._backlog_rows += sum(r.rows for r in records)
            self._sizes[segment] = valid
            last_end = Position(segment, valid)
        self._checkpoint = checkpoint
        self._durable_end = last_end
        self._backlog_bytes = self._unconsumed_bytes()
        self._segment = max(last_end.segment, 1)
        self._segment_size = last_end.offset if segments else 0
        self._file = open(self._path(self._segment), "ab")  # noqa: SIM115 -- kept open
        if not segments:
            _fsync_directory(self.directory)  # type: ignore[arg-type]

    # -- appending -------------------------------------------------------------------------------

    def append(self, kind: RowKind, payload: bytes, rows: int) -> Receipt:
        """Buffer rows for the next group commit; raises :class:`JournalFull` or
        :class:`JournalFailed` instead of accepting rows it cannot keep."""
        size = len(payload)
        with self._lock:
            if self._failure is not None:
                raise JournalFailed(f"the journal cannot be written: {self._failure}")
            if self._closing:
                raise JournalFailed("the journal is closing")
            run = self._pending[-1] if self._pending else None
            if run is not None and (run.kind != kind or run.size + size > MERGE_BYTES):
                run = None  # a record of its own
            added = size if run is not None else size + HEADER_SIZE
            if self._backlog_bytes + self._pending_bytes + added > self._max_bytes:
                raise JournalFull(
                    f"the journal holds {self._backlog_bytes + self._pending_bytes} bytes not yet "
                    f"in the store (bound {self._max_bytes}); retry shortly"
                )
            if run is not None:
                run.add(payload, rows)
            else:
                if not self._pending:
                    self._work.notify()  # the flusher sleeps without a deadline while idle
                self._pending.append(_Run(kind, payload, rows))
            self._pending_appends += 1
            self._pending_bytes += added
            self._pending_rows += rows
            self._appended_rows += rows
            self._seq += 1
            return Receipt(self, self._group)

    def _hurry(self) -> None:
        """Somebody waits for the open group: flush it now rather than at the next interval."""
        with self._lock:
            if not self._urgent:
                self._urgent = True
                self._work.notify()

    def sync(self, timeout: float = 10.0) -> bool:
        """Wait until everything appended so far is durable."""
        with self._lock:
            group = self._group if self._pending else None
        return Receipt(self, group).wait(timeout) if group is not None else not self.failed

    def _run(self) -> None:
        """The flusher: writes and syncs the open group as soon as somebody waits for it, and
        every :data:`FLUSH_INTERVAL` anyway (appends nobody waits for: asynchronous exposures);
        while it writes one group, the next one gathers -- the group commit."""
        with self._lock:
            while self._failure is None:
                if (
                    self._pending
                    and self._urgent
                    and not self._closing
                    and self._commit_delay
                    and self._last_group >= COMMIT_SIBLINGS
                ):
                    # Commit delay: let the calls arriving now join this fsync (fewer, fuller
                    # group commits: each fsync is kernel time on the server's cores).
                    self._lock.release()
                    time.sleep(self._commit_delay)
                    self._lock.acquire()
                if self._pending and (self._urgent or self._closing or self._due()):
                    self._flush_locked()
                elif self._closing and not self._pending:
                    return
                else:
                    # Idle, it waits for the next append: a thread waking every few ms would
                    # take the GIL from a busy request loop each time, for nothing.
                    self._work.wait(FLUSH_INTERVAL if self._pending else None)

    def _due(self) -> bool:
        return time.monotonic() - self._last_flush >= FLUSH_INTERVAL

    def _flush_locked(self) -> None:
        """Write and sync the open group; called with the lock held, released while writing."""
        runs, rows, size = self._pending, self._pending_rows, self._pending_bytes
        group = self._group
        self._last_group = self._pending_appends
        self._pending, self._pending_bytes, self._pending_rows = [], 0, 0
        self._pending_appends = 0
        self._group = Group()
        self._urgent = False
        failure: OSError | None = None
        self._lock.release()
        try:
            records, end = self._write([run.frame() for run in runs])
        except OSError as exc:
            failure = exc
        finally:
            self._lock.acquire()
        self._last_flush = time.monotonic()
        if failure is not None:
            log.error(
                "journal %s: write failed (%s); refusing further appends", self.directory, failure
            )
            self._failure = failure
            self._group.finish(False)  # nobody appended after it will ever be durable either
        else:
            self._durable_rows += rows
            self._backlog_rows += rows
            self._backlog_bytes += size
            self._durable_end = end
            self._memory.extend(records)
            self._syncs += 1
        group.finish(failure is None)
        self._progress.notify_all()

    def _write(self, frames: list[bytes]) -> tuple[list[Record], Position]:
        data = b"".join(frames)
        if self.directory is None:
            # Memory mode: positions count bytes in one endless segment.
            records, offset = [], self._durable_end.offset
            for f in frames:
                offset += len(f)
                kind, rows = f[2], struct.unpack_from(">I", f, 3)[0]
                records.append(Record(RowKind(kind), rows, f[HEADER_SIZE:], Position(1, offset)))
            return records, Position(1, offset)
        assert self._file is not None
        if self._segment_size and self._segment_size + len(data) > self._segment_bytes:
            self._file.close()
            self._segment += 1
            self._segment_size = 0
            self._file = open(self._path(self._segment), "ab")  # noqa: SIM115 -- kept open
            _fsync_directory(self.directory)
        self._file.write(data)
        self._file.flush()
        if self._sync:
            os.fdatasync(self._file.fileno())
        self._segment_size += len(data)
        self._sizes[self._segment] = self._segment_size
        return [], Position(self._segment, self._segment_size)

    # -- consuming -------------------------------------------------------------------------------

    @property
    def checkpoint(self) -> Position:
        with self._lock:
            return self._checkpoint

    @property
    def durable_end(self) -> Position:
        with self._lock:
            return self._durable_end

    def read(self, after: Position, *, max_rows: int, timeout: float) -> list[Record]:
        """Durable records after ``after``, up to about ``max_rows`` rows (at least one record);
        waits up to ``timeout`` seconds for one to arrive."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._durable_end <= after and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._progress.wait(remaining)
            end = self._durable_end
            if self.directory is None:
                return _take((r for r in self._memory if r.end > after), max_rows)
        return _take(self._read_files(after, end), max_rows)

    def _read_files(self, after: Position, end: Position) -> Iterator[Record]:
        """Records from ``after`` to ``end``, read a chunk at a time (a consumer takes only the
        first few thousand rows of what may be a long backlog)."""
        segment, offset = after
        while (segment, offset) < end:
            stop = end.offset if segment == end.segment else None
            try:
                with open(self._path(segment), "rb") as handle:
                    while stop is None or offset < stop:
                        handle.seek(offset)
                        size = READ_CHUNK if stop is None else min(READ_CHUNK, stop - offset)
                        data = handle.read(size)
                        records, valid = parse(data, segment, offset)
                        if not records:
                            if len(data) < size or size < READ_CHUNK:
                                break  # the segment's end (or a record larger than a chunk)
                            data = handle.read()  # one record larger than a chunk
                            records, valid = parse(data, segment, offset)
                            if not records:
                                break
                        yield from records
                        offset = valid
            except FileNotFoundError:
                pass
            if segment >= end.segment:
                return
            segment, offset = segment + 1, 0

    def consumed(self, position: Position, rows: int) -> None:
        """A consumer handled every record up to ``position`` (``rows`` rows): checkpoint it and
        delete the segments wholly before it."""
        with self._lock:
            if position <= self._checkpoint:
                return
            self._checkpoint = position
            self._consumed_rows += rows
            self._backlog_rows = max(0, self._backlog_rows - rows)
            if self.directory is None:
                self._memory = [r for r in self._memory if r.end > position]
                self._backlog_bytes = sum(len(r.payload) + HEADER_SIZE for r in self._memory)
            self._consumption.notify_all()
        if self.directory is None:
            return
        _write_checkpoint(self.directory / CHECKPOINT, position)
        for segment in [s for s in self._sizes if s < position.segment]:
            self._path(segment).unlink(missing_ok=True)
            del self._sizes[segment]
        with self._lock:
            self._backlog_bytes = self._unconsumed_bytes()

    def _unconsumed_bytes(self) -> int:
        return sum(
            size - (self._checkpoint.offset if segment == self._checkpoint.segment else 0)
            for segment, size in self._sizes.items()
            if segment >= self._checkpoint.segment
        )

    def wait_consumed(self, position: Position, timeout: float) -> bool:
        """Block until a consumer checkpointed ``position``; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._checkpoint < position:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._consumption.wait(remaining)
            return True

    # -- the rest --------------------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def stats(self) -> JournalStats:
        with self._lock:
            return JournalStats(
                appended_rows=self._appended_rows,
                durable_rows=self._durable_rows,
                consumed_rows=self._consumed_rows,
                backlog_rows=self._backlog_rows + self._pending_rows,
                backlog_bytes=self._backlog_bytes,
                pending_bytes=self._pending_bytes,
                syncs=self._syncs,
                failed=self._failure is not None,
            )

    def close(self, timeout: float = 10.0) -> bool:
        """Refuse new appends, write what is buffered, stop the flusher; True when everything
        appended is durable. Consumers may still read and checkpoint until :meth:`release`."""
        with self._lock:
            self._closing = True
            self._work.notify_all()
            self._progress.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            return not self._pending and self._failure is None

    def release(self) -> None:
        """Close the files and give the directory up to another process."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _take(records: Iterable[Record], max_rows: int) -> list[Record]:
    taken: list[Record] = []
    rows = 0
    for r in records:
        if taken and rows + r.rows > max_rows:
            break
        taken.append(r)
        rows += r.rows
    return taken


def _read_checkpoint(path: Path) -> Position:
    try:
        segment, offset = path.read_text().split()
        return Position(int(segment), int(offset))
    except FileNotFoundError:
        return START
    except ValueError:
        log.warning("journal checkpoint %s is unreadable; replaying from the start", path)
        return START


def _write_checkpoint(path: Path, position: Position) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        handle.write(f"{position.segment} {position.offset}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _identity(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        identity = uuid.uuid4().hex[:12]
        with open(path, "w") as handle:
            handle.write(identity + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_directory(path.parent)
        return identity


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(directory: Path) -> IO[str]:
    """The journal's lock file, locked (exclusively, without waiting); close it to release."""
    handle = open(directory / ".lock", "a")  # noqa: SIM115 -- the caller closes it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise JournalInUse(
            f"the journal {directory} is used by another abkit process; give each process "
            "its own ABKIT_SPOOL_DIR"
        ) from None
    return handle


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    with _lock(directory):
        yield
