"""Alembic migrations of the abkit schema (shipped in the wheel as ``abkit.migrations``)."""
