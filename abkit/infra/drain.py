"""The journal's way into the database: a thread that copies durable records into the store.

:class:`JournalDrain` reads the journal after its checkpoint, up to ``batch_rows`` rows at a
time, writes them in one transaction -- PostgreSQL takes each kind's text in one ``COPY``, as
the journal holds it (:mod:`abkit.core.rows`), so no row is formatted again -- and checkpoints
the journal only after the commit. Inserts are idempotent (first exposure per experiment and
unit, one event per id), so records read again after a crash store nothing twice.

**Store outage**: the records stay in the journal (they are durable already); the drain backs
off exponentially (``0.05 s`` doubling to ``max_backoff``) and retries; the journal's bound
applies back-pressure upstream.

**A row the store refuses** for a reason other than availability (a value it rejects) cannot
block the journal forever: the batch is retried record by record, a record that fails on its
own (it may hold the rows of many calls: a group commit's) row by row, and only the rows
refused on their own are written to ``<journal>/dead-letter/`` with the reasons, counted and
skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from abkit.core.rows import RowKind
from abkit.errors import AbkitError, StoreUnavailableError
from abkit.infra.journal import Journal, Position, Record
from abkit.ports import Store

log = logging.getLogger(__name__)


def write_rows(store: Store, parts: Iterable[tuple[RowKind, str, int]]) -> dict[RowKind, int]:
    """Write ``(kind, COPY text, rows)`` parts in one transaction, each kind's text in one
    idempotent insert (PostgreSQL copies it as it is); the rows that were new, per kind. Shared
    by the drain and ``abkit loader``."""
    texts: dict[RowKind, list[str]] = {RowKind.EXPOSURES: [], RowKind.EVENTS: []}
    rows = dict.fromkeys(texts, 0)
    for kind, text, n in parts:
        texts[kind].append(text)
        rows[kind] += n
    new = dict.fromkeys(texts, 0)
    with store.transaction() as tx:
        if texts[RowKind.EXPOSURES]:
            new[RowKind.EXPOSURES] = tx.exposures.add_text(
                "".join(texts[RowKind.EXPOSURES]), rows[RowKind.EXPOSURES]
            )
        if texts[RowKind.EVENTS]:
            new[RowKind.EVENTS] = tx.events.add_text(
                "".join(texts[RowKind.EVENTS]), rows[RowKind.EVENTS]
            )
    return new


@dataclass(frozen=True, slots=True)
class DrainStats:
    written: dict[str, int]
    """New rows inserted, per kind (``exposures``, ``events``)."""
    duplicates: int
    dead_lettered: int
    failed_batches: int
    down: bool


class JournalDrain:
    """Copies a journal's durable records into the store, in order, exactly once in effect."""

    def __init__(
        self,
        journal: Journal,
        store: Store,
        *,
        batch_rows: int = 2000,
        interval: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        self._journal = journal
        self._store = store
        self._batch_rows = batch_rows
        self._interval = interval
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._position = journal.checkpoint
        self._written = {RowKind.EXPOSURES: 0, RowKind.EVENTS: 0}
        self._duplicates = 0
        self._dead = 0
        self._failed_batches = 0
        self._down_until = 0.0
        self._backoff = 0.05
        self._down = False

    def start(self) -> None:
        self._position = self._journal.checkpoint
        self._thread = threading.Thread(target=self._run, name="abkit-drain", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            # Caught up with what was durable when the batch was read (or nothing could be
            # written): let rows gather for a batch rather than copy a few at a time. A batch
            # may end short of ``batch_rows`` with a backlog behind it (records hold a group
            # commit's rows and are not split); then the next one follows at once.
            end = self._journal.durable_end
            if not self.step() or self._position >= end:
                self._stop.wait(self._interval)

    def step(self, timeout: float = 0.0) -> int:
        """One batch: read, write, checkpoint. The rows handled (0: nothing durable to take)."""
        records = self._journal.read(self._position, max_rows=self._batch_rows, timeout=timeout)
        if not records:
            return 0
        try:
            self._write(records)
        except StoreUnavailableError as exc:
            self._mark_down(exc)
            self._stop.wait(self._backoff)
            return 0
        except Exception as exc:  # noqa: BLE001 -- a refused value must not stall the journal
            log.warning("journal drain: a batch was refused (%s); retrying record by record", exc)
            if not self._one_by_one(records):
                return 0
        self._mark_up()
        rows = sum(r.rows for r in records)
        self._position = records[-1].end
        self._journal.consumed(self._position, rows)
        return rows

    def _write(self, records: Sequence[Record]) -> None:
        new = write_rows(self._store, [(r.kind, r.payload.decode(), r.rows) for r in records])
        for kind, rows in new.items():
            self._written[kind] += rows
        self._duplicates += sum(r.rows for r in records) - sum(new.values())

    def _one_by_one(self, records: Sequence[Record]) -> bool:
        """Write each record alone; dead-letter the ones the store refuses. False when the store
        became unavailable (the batch stays in the journal)."""
        for record in records:
            try:
                self._write([record])
            except StoreUnavailableError as exc:
                self._mark_down(exc)
                return False
            except Exception as exc:  # noqa: BLE001 -- something in this record is refused
                if not self._row_by_row(record, exc):
                    return False
        return True

    def _row_by_row(self, record: Record, exc: BaseException) -> bool:
        """Write a refused record's rows one at a time; dead-letter those refused on their own.
        False when the store became unavailable (the record stays in the journal; the rows
        already written are not stored twice when it is read again)."""
        rows = [row + b"\n" for row in record.payload.split(b"\n") if row]
        if len(rows) <= 1:
            self._dead_letter(record, [(record.payload, exc)])
            return True
        refused: list[tuple[bytes, BaseException]] = []
        for row in rows:
            try:
                self._write([Record(record.kind, 1, row, record.end)])
            except StoreUnavailableError as down:
                self._mark_down(down)
                return False
            except Exception as row_exc:  # noqa: BLE001 -- this row, and only it, is refused
                refused.append((row, row_exc))
        if refused:
            self._dead_letter(record, refused)
        return True

    def _dead_letter(self, record: Record, refused: Sequence[tuple[bytes, BaseException]]) -> None:
        self._dead += len(refused)  # one line, one row
        directory = self._journal.directory
        log.error("journal drain: %d %s rows refused by the store: %s", len(refused),
                  record.kind.name.lower(), refused[0][1])  # fmt: skip
        if directory is None:
            return
        target = Path(directory) / "dead-letter"
        target.mkdir(exist_ok=True)
        name = f"{record.end.segment:08d}-{record.end.offset:012d}-{record.kind.name.lower()}"
        (target / f"{name}.rows").write_bytes(b"".join(row for row, _ in refused))
        (target / f"{name}.reason").write_text(
            "".join(f"{type(exc).__name__}: {exc}\n" for _, exc in refused)
        )

    def _mark_down(self, exc: AbkitError) -> None:
        self._failed_batches += 1
        if not self._down:
            log.warning(
                "journal drain: the store refuses writes (%s); rows wait in the journal", exc
            )
            self._down = True
        self._down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._max_backoff)

    def _mark_up(self) -> None:
        self._backoff = 0.05
        if self._down:
            self._down = False
            log.warning("journal drain: the store accepts writes again")

    @property
    def degraded(self) -> bool:
        """True while the store refuses writes."""
        return self._down

    @property
    def position(self) -> Position:
        return self._position

    def stats(self) -> DrainStats:
        return DrainStats(
            written={k.name.lower(): v for k, v in self._written.items()},
            duplicates=self._duplicates,
            dead_lettered=self._dead,
            failed_batches=self._failed_batches,
            down=self._down,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Drain what is durable (within ``timeout``), then stop."""
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._journal.wait_consumed(
                self._journal.durable_end, max(0.0, deadline - time.monotonic())
            )
            self._stop.set()
            self._thread.join(max(0.0, deadline - time.monotonic()))
