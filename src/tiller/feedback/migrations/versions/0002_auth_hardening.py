"""auth hardening (issue #15): session versions, login backoff, case-insensitive unique names; the
session signing key leaves the database

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def name_key(name: str) -> str:
    """A frozen copy of ``services.users.name_key`` (NFKC, casefold, NFKC): a migration must not change
    when the app's code does."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name_key', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('session_version', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('failed_logins', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('locked_until', sa.DateTime(), nullable=True))

    # Existing names keep working: each gets its key, except a later name whose key an older one already
    # has (``Ana`` after ``ana``); that one keeps NULL (unique allows many) and logs in by its exact name.
    conn = op.get_bind()
    users = sa.table('users', sa.column('id', sa.Integer), sa.column('name', sa.String),
                     sa.column('name_key', sa.String))
    taken: set[str] = set()
    for uid, name in conn.execute(sa.select(users.c.id, users.c.name).order_by(users.c.id)).all():
        key = name_key(name)
        if key not in taken and len(key) <= 64:
            taken.add(key)
            conn.execute(users.update().where(users.c.id == uid).values(name_key=key))

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_users_name_key', ['name_key'])

    # The cookie signing key no longer lives with the data (anyone who could read the database could sign
    # an admin's cookie). Dropping it logs everyone out once; the app now takes its key from
    # $TILLER_APP_SECRET or a 0600 file (docs/deployment.md).
    settings = sa.table('settings', sa.column('key', sa.String))
    conn.execute(settings.delete().where(settings.c.key == 'secret_key'))


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_constraint('uq_users_name_key', type_='unique')
        batch_op.drop_column('locked_until')
        batch_op.drop_column('failed_logins')
        batch_op.drop_column('session_version')
        batch_op.drop_column('name_key')
