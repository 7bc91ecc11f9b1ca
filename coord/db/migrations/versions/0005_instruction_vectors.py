"""Agents get a second vector, made from their instructions (coord.matching.embedder.instruction_segments).

Rows written before this revision have none (NULL): they keep ranking with their first vector, and the
embed job, which counts them as missing, embeds those agents again in the background (the `embed_backfill`
periodic job queues it); a row is replaced whole, so nothing ranks with a half-written pair. The stored
text hash now covers the instructions too, so the next change of any file also re-embeds its agent.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("agent_embeddings", sa.Column("body_vector", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE on both engines (SQLite >= 3.35), as in 0004.
    op.execute("ALTER TABLE agent_embeddings DROP COLUMN body_vector")
