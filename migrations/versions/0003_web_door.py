"""the web door: sessions before sign-in, the door of each file version, published door keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 15:40:00.000000

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    # A portal session exists before sign-in (the CSRF token, the pending TOTP step).
    op.alter_column('web_sessions', 'user_id', existing_type=sa.BigInteger(), nullable=True)
    op.alter_column('web_sessions', 'session_version', existing_type=sa.Integer(), nullable=True)
    op.create_index(op.f('ix_web_sessions_expires_at'), 'web_sessions', ['expires_at'], unique=False)
    op.add_column('file_versions', sa.Column('door', sa.String(length=8), nullable=True))
    op.create_table(
        'door_keys',
        sa.Column('door', sa.String(length=8), nullable=False),
        sa.Column('key_type', sa.String(length=32), nullable=False),
        sa.Column('fingerprint', sa.Text(), nullable=False),
        sa.Column('published_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('door', 'key_type', name=op.f('pk_door_keys')),
    )


def downgrade():
    op.drop_table('door_keys')
    op.drop_column('file_versions', 'door')
    op.drop_index(op.f('ix_web_sessions_expires_at'), table_name='web_sessions')
    op.execute("DELETE FROM web_sessions WHERE user_id IS NULL OR session_version IS NULL")
    op.alter_column('web_sessions', 'session_version', existing_type=sa.Integer(), nullable=False)
    op.alter_column('web_sessions', 'user_id', existing_type=sa.BigInteger(), nullable=False)
