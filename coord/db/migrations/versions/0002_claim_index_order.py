"""Cheaper claims and completions: partial task indexes in the claim's order; the inbox without rowid.

- ix_tasks_claim had `priority` ascending, so SQLite sorted every pending task of the top priority on
  each claim ("USE TEMP B-TREE FOR RIGHT PART OF ORDER BY"): a claim's cost grew with the queue. It now
  follows the claim's order (priority descending, oldest, id) and holds pending tasks only.
- ix_tasks_lease holds claimed tasks only (what the reaper and the load-aware ranking look for).
- SQLite: the inbox becomes a WITHOUT ROWID table, one b-tree fewer to write per notification.

Measured with `scripts/bench claims`: WAL pages written per claim+complete cycle 14.4 -> 8.6.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")
CLAIMED = sa.text("status = 'claimed'")


def upgrade() -> None:
    op.drop_index("ix_tasks_claim", table_name="tasks")
    op.drop_index("ix_tasks_lease", table_name="tasks")
    op.create_index(
        "ix_tasks_claim", "tasks", ["to_agent", sa.text("priority DESC"), "created_at", "id"],
        sqlite_where=PENDING, postgresql_where=PENDING,
    )
    op.create_index("ix_tasks_lease", "tasks", ["lease_expires_at"], sqlite_where=CLAIMED, postgresql_where=CLAIMED)
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("inbox", recreate="always", table_kwargs={"sqlite_with_rowid": False}):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("inbox", recreate="always"):
            pass
    op.drop_index("ix_tasks_claim", table_name="tasks")
    op.drop_index("ix_tasks_lease", table_name="tasks")
    op.create_index("ix_tasks_claim", "tasks", ["to_agent", "status", "priority", "created_at"], unique=False)
    op.create_index("ix_tasks_lease", "tasks", ["status", "lease_expires_at"], unique=False)
