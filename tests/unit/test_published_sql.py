"""The SQL published for analysts under analysis/ is exactly what the store runs."""

from __future__ import annotations

from pathlib import Path

from abkit.store.analysis import published_queries

ANALYSIS = Path(__file__).parents[2] / "analysis"


def test_published_queries_are_up_to_date() -> None:
    for name, sql in published_queries().items():
        path = ANALYSIS / name
        assert path.exists(), f"analysis/{name} is missing: run `make analysis-sql`"
        assert path.read_text() == sql, f"analysis/{name} is stale: run `make analysis-sql`"
