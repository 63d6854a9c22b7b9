"""The recorders behind Assign and Track: rows encoded once, appended to the journal.

A :class:`JournalRecorder` is what :class:`~abkit.services.assignment.AssignmentService` hands
its exposures or events to (the :class:`~abkit.ports.Recorder` port), already encoded as
:mod:`abkit.core.rows` text -- the only time a row is formatted on its way to the store: it
appends them to the :class:`~abkit.infra.journal.Journal` as one record and returns the receipt
the service waits on before it answers.
"""

from __future__ import annotations

from abkit.core.rows import RowKind
from abkit.errors import StoreUnavailableError
from abkit.infra.journal import Journal, Receipt


class JournalRecorder:
    """Appends encoded rows of one kind to a journal; counts what it had to refuse."""

    def __init__(self, journal: Journal, kind: RowKind) -> None:
        self._journal = journal
        self._kind = kind
        self.refused = 0

    def record(self, text: str, rows: int) -> Receipt:
        try:
            return self._journal.append(self._kind, text.encode(), rows)
        except StoreUnavailableError:
            self.refused += rows
            raise
