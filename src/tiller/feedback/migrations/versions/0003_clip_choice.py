"""clip comparisons (issue #16): a label's choice between two clips (left, right, equal, cant_tell)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: rankings and demonstrations have no choice; batches.kind (String(8)) already
    # holds 'clip'.
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('choice', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.drop_column('choice')
