"""An index of the outbox rows no worker has taken yet, in the order batches take them.

A worker's batch takes the bell's own row and the oldest other fresh rows of its job (coord.outbox); the
delegation's doorbell check on SQLite asks whether such a row waits. Through ix_outbox_due (status,
next_attempt_at) both read every pending row of every job and sorted them, so a take cost grew with the
backlog: on PostgreSQL 2.7 ms for a batch of 10 behind a backlog of 3,000. With this partial index the
take reads the batch's rows, oldest first, and stops.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FRESH = sa.text("status = 'pending' AND attempts = 0")


def upgrade() -> None:
    op.create_index("ix_outbox_fresh", "outbox", ["job", "created_at"], sqlite_where=FRESH, postgresql_where=FRESH)


def downgrade() -> None:
    op.drop_index("ix_outbox_fresh", table_name="outbox")
