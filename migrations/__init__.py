"""Alembic migrations: one revision per schema change. Run them with `impasto db upgrade`."""
