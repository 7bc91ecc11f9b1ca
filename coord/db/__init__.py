"""The coordination database: engine set-up, models, migrations and the per-engine backends."""

from coord.db.engine import Database, open_database

__all__ = ["Database", "open_database"]
