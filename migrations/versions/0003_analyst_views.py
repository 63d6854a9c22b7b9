"""Analyst views: exposures per day, per-unit metric values, per-arm sums, the worker's numbers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

Five read-only views for analysts (documented with example queries in analysis/README.md):

* ``v_exposures_daily`` -- units first exposed per experiment, arm and UTC day, and the running
  total;
* ``v_unit_metric_values`` -- per exposed unit and event name, the events at or after the
  unit's first exposure: how many, the sum of their values, the first and last time;
* ``v_arm_metric_totals`` -- per experiment, arm and event name the sufficient statistics
  ``n, sum, sum of squares`` of the per-unit value, for each metric kind (binary: units with an
  event; count: events; continuous: values). Units without an event count as 0, so ``units``
  (all exposed units of the arm) is the ``n``;
* ``v_arm_metric_daily`` -- the same cumulative statistics at the end of every UTC day with an
  event (the one-pass running-sum method of ``abkit.store.analysis.daily_sql``);
* ``v_look_comparisons`` -- the numbers the worker decided on: one row per look and comparison,
  read from the JSON snapshot in ``decisions``.

The views have no attribution window and no CUPED: they apply a metric's plain definition. The
exact query the worker runs for a policy with windows or CUPED is published in analysis/*.sql.

Only the day arithmetic and the JSON access differ between SQLite and PostgreSQL. Alembic's
autogenerate compares tables only (views are not reflected as tables), so the models-vs-schema
test is unaffected. A later migration that rebuilds ``exposures``, ``events`` or ``decisions``
(SQLite's batch mode copies and renames the table, PostgreSQL refuses to alter a column a view
uses) must drop these views first and create them again afterwards.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = (
    "v_exposures_daily",
    "v_unit_metric_values",
    "v_arm_metric_totals",
    "v_arm_metric_daily",
    "v_look_comparisons",
)


def _day(column: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    return f"substr({column}, 1, 10)"


def _before_next_day(column: str, day: str, dialect: str) -> str:
    """``column`` is before the end of the UTC day ``day`` ('YYYY-MM-DD' text)."""
    if dialect == "postgresql":
        return f"{column} < ((CAST({day} AS date) + 1) AT TIME ZONE 'UTC')"
    return f"{column} < date({day}, '+1 day')"


def _exposures_daily(dialect: str) -> str:
    day = _day("exposed_at", dialect)
    return f"""CREATE VIEW v_exposures_daily AS
SELECT experiment_key, arm_key, model_version, day, units,
       CAST(SUM(units) OVER (PARTITION BY experiment_key, arm_key ORDER BY day
                             ROWS UNBOUNDED PRECEDING) AS BIGINT) AS units_cumulative
FROM (
    SELECT experiment_key, arm_key, model_version, {day} AS day, COUNT(*) AS units
    FROM exposures
    GROUP BY experiment_key, arm_key, model_version, {day}
) AS per_day"""


UNIT_METRIC_VALUES = """CREATE VIEW v_unit_metric_values AS
SELECT x.experiment_key, x.arm_key, x.unit_id, x.exposed_at, v.metric,
       COUNT(*) AS events,
       SUM(v.value) AS value_sum,
       MIN(v.occurred_at) AS first_event_at,
       MAX(v.occurred_at) AS last_event_at
FROM exposures AS x
JOIN events AS v ON v.unit_id = x.unit_id AND v.occurred_at >= x.exposed_at
GROUP BY x.experiment_key, x.arm_key, x.unit_id, x.exposed_at, v.metric"""

ARM_METRIC_TOTALS = """CREATE VIEW v_arm_metric_totals AS
SELECT u.experiment_key, u.arm_key, u.metric,
       n.units,
       COUNT(*) AS units_with_events,
       CAST(SUM(u.events) AS BIGINT) AS events,
       CAST(SUM(u.events * u.events) AS BIGINT) AS events_sum_sq,
       SUM(u.value_sum) AS value_sum,
       SUM(u.value_sum * u.value_sum) AS value_sum_sq
FROM v_unit_metric_values AS u
JOIN (
    SELECT experiment_key, arm_key, COUNT(*) AS units
    FROM exposures
    GROUP BY experiment_key, arm_key
) AS n ON n.experiment_key = u.experiment_key AND n.arm_key = u.arm_key
GROUP BY u.experiment_key, u.arm_key, u.metric, n.units"""


def _arm_metric_daily(dialect: str) -> str:
    day = _day("v.occurred_at", dialect)
    exposed_by = _before_next_day("e.exposed_at", "c.day", dialect)
    # Per (unit, metric, day): the day's increment a and the unit's running total y; the day's
    # change of the sum of squares over units is y^2 - (y - a)^2 (see abkit/store/analysis.py).
    return f"""CREATE VIEW v_arm_metric_daily AS
WITH unit_days AS (
    SELECT x.experiment_key, x.arm_key, x.unit_id, v.metric, {day} AS day,
           COUNT(*) AS events, SUM(v.value) AS value_sum
    FROM exposures AS x
    JOIN events AS v ON v.unit_id = x.unit_id AND v.occurred_at >= x.exposed_at
    GROUP BY x.experiment_key, x.arm_key, x.unit_id, v.metric, {day}
),
running AS (
    SELECT experiment_key, arm_key, metric, day, events, value_sum,
           SUM(events) OVER w AS events_run,
           SUM(value_sum) OVER w AS value_run,
           ROW_NUMBER() OVER w AS nth
    FROM unit_days
    WINDOW w AS (PARTITION BY experiment_key, unit_id, metric ORDER BY day
                 ROWS UNBOUNDED PRECEDING)
),
changes AS (
    SELECT experiment_key, arm_key, metric, day,
           SUM(CASE WHEN nth = 1 THEN 1 ELSE 0 END) AS new_units_with_events,
           SUM(events) AS events,
           SUM(events_run * events_run - (events_run - events) * (events_run - events))
               AS events_sq_change,
           SUM(value_sum) AS value_sum,
           SUM(value_run * value_run - (value_run - value_sum) * (value_run - value_sum))
               AS value_sq_change
    FROM running
    GROUP BY experiment_key, arm_key, metric, day
)
SELECT c.experiment_key, c.arm_key, c.metric, c.day,
       (SELECT COUNT(*) FROM exposures AS e
        WHERE e.experiment_key = c.experiment_key AND e.arm_key = c.arm_key
          AND {exposed_by}) AS units,
       CAST(SUM(c.new_units_with_events) OVER d AS BIGINT) AS units_with_events,
       CAST(SUM(c.events) OVER d AS BIGINT) AS events,
       CAST(SUM(c.events_sq_change) OVER d AS BIGINT) AS events_sum_sq,
       SUM(c.value_sum) OVER d AS value_sum,
       SUM(c.value_sq_change) OVER d AS value_sum_sq
FROM changes AS c
WINDOW d AS (PARTITION BY c.experiment_key, c.arm_key, c.metric ORDER BY c.day
             ROWS UNBOUNDED PRECEDING)"""


COMPARISON_FIELDS = (
    # (column, JSON field, PostgreSQL type)
    ("metric", "metric", "text"),
    ("role", "role", "text"),
    ("arm", "arm", "text"),
    ("n_control", "n_control", "bigint"),
    ("n_treatment", "n_treatment", "bigint"),
    ("control_mean", "control_mean", "double precision"),
    ("treatment_mean", "treatment_mean", "double precision"),
    ("estimate", "estimate", "double precision"),
    ("ci_low", "ci_low", "double precision"),
    ("ci_high", "ci_high", "double precision"),
    ("p_value", "p_value", "double precision"),
    ("alpha", "alpha", "double precision"),
    ("status", "status", "text"),
    ("method", "method", "text"),
    ("boundary", "boundary", "double precision"),
    ("margin", "margin", "double precision"),
)
FLAGS = ("relative", "better", "worse", "harmed", "non_inferior")


def _look_comparisons(dialect: str) -> str:
    if dialect == "postgresql":
        columns = [f"CAST(c.doc ->> '{f}' AS {t}) AS {name}" for name, f, t in COMPARISON_FIELDS]
        columns += [f"CASE WHEN c.doc ->> '{f}' = 'true' THEN 1 ELSE 0 END AS {f}" for f in FLAGS]
        source = (
            "FROM decisions AS d\n"
            "CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(d.snapshot -> "
            "'comparisons') = 'array' THEN d.snapshot -> 'comparisons' ELSE '[]'::jsonb END) "
            "AS c(doc)"
        )
    else:
        columns = [f"json_extract(c.value, '$.{f}') AS {name}" for name, f, _ in COMPARISON_FIELDS]
        columns += [
            f"CASE WHEN json_extract(c.value, '$.{f}') = 1 THEN 1 ELSE 0 END AS {f}" for f in FLAGS
        ]
        source = (
            "FROM decisions AS d, json_each(CASE WHEN json_type(d.snapshot, '$.comparisons') = "
            "'array' THEN json_extract(d.snapshot, '$.comparisons') ELSE '[]' END) AS c"
        )
    select = ",\n       ".join(columns)
    return f"""CREATE VIEW v_look_comparisons AS
SELECT d.experiment_key, d.look, d.decided_at, d.action, d.arm_key AS decision_arm,
       {select}
{source}
WHERE d.look IS NOT NULL"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(_exposures_daily(dialect))
    op.execute(UNIT_METRIC_VALUES)
    op.execute(ARM_METRIC_TOTALS)
    op.execute(_arm_metric_daily(dialect))
    op.execute(_look_comparisons(dialect))


def downgrade() -> None:
    for view in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {view}")
