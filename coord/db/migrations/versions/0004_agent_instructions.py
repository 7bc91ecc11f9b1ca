"""Agents keep their instructions (the Markdown body of their file); vectors get the body's word bag.

Hybrid ranking scores its candidates by the words of their instructions too (coord.matching.bodyterms).
Files synced before this revision were stored without their body, so every file is read again by the
next folder sync (its stat signature and hashes are forgotten): each file agent gets one `updated`
history event and the word bag of its body; its vector is kept (the embedded text did not change: no
model call), and nothing else changes. Agents registered through the API have no instructions until they
are registered again with some.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("agents", sa.Column("instructions", sa.Text(), nullable=False, server_default=""))
    op.add_column("agent_embeddings", sa.Column("terms", sa.LargeBinary(), nullable=True))
    op.execute("UPDATE agent_files SET mtime_ns = NULL, seen_hash = NULL")
    op.execute("UPDATE agents SET content_hash = NULL WHERE origin <> 'api'")


def downgrade() -> None:
    # Plain ALTER TABLE on both engines (SQLite >= 3.35): a batch copy of `agents` on SQLite would drop the
    # table, and with foreign keys on, that deletes the rows that refer to it.
    op.execute("ALTER TABLE agent_embeddings DROP COLUMN terms")
    op.execute("ALTER TABLE agents DROP COLUMN instructions")
