"""What the PostgreSQL benchmarks share: a scratch database, and the analysis under test.

Benchmarks run as scripts (``python tests/benchmarks/bench_x.py``), so this module is imported
from the script's own directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from abkit.core.metrics import Metric
from abkit.store import migrate
from abkit.store.engine import create_store_engine

ADMIN_URL = os.environ.get(
    "ABKIT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

# The analysis benchmarks' experiment 'bench': a binary conversion and a continuous revenue,
# both with a 7-day attribution window.
METRICS = [
    Metric("conversion", "binary", window_seconds=7 * 86400),
    Metric("revenue", "continuous", window_seconds=7 * 86400),
]
# The goal's baseline: the same rows (the experiment's exposures joined to the events of its
# metrics) grouped the way any per-unit statistic must be -- per unit, then per arm -- with bare
# SUMs instead of abkit's windowed, per-metric CASE expressions.
BARE = """
SELECT arm_key, COUNT(*), SUM(y), SUM(y * y) FROM (
    SELECT x.arm_key, x.unit_id, SUM(v.value) AS y
    FROM exposures AS x
    LEFT JOIN events AS v ON v.unit_id = x.unit_id AND v.metric IN ('conversion', 'revenue')
    WHERE x.experiment_key = 'bench'
    GROUP BY x.arm_key, x.unit_id
) AS per_unit
GROUP BY arm_key
"""


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new, migrated PostgreSQL database for one benchmark run; its URL. Dropped at the end."""
    admin = create_store_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"abkit_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        engine = create_store_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
