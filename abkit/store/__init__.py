"""The SQL store adapter (SQLite, PostgreSQL) and its in-memory twin (``abkit.store.memory``)."""
