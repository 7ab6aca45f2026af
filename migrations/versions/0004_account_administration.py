"""account administration: set-password links, last sign-in, forced password change, link policy

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 16:20:00.000000

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('users', sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('users', sa.Column('must_change_password', sa.Boolean(), server_default=sa.text('false'),
                                     nullable=False))
    op.add_column('accounts', sa.Column('link_max_days', sa.Integer(), server_default=sa.text('30'),
                                        nullable=False))
    op.add_column('accounts', sa.Column('link_password_required', sa.Boolean(), server_default=sa.text('false'),
                                        nullable=False))
    op.add_column('accounts', sa.Column('request_links_allowed', sa.Boolean(), server_default=sa.text('true'),
                                        nullable=False))
    op.create_table(
        'password_links',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('user_id', sa.BigInteger(), nullable=False),
        sa.Column('purpose', sa.String(length=8), nullable=False),
        sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("purpose IN ('invite', 'reset')", name=op.f('ck_password_links_purpose')),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_password_links_user_id_users'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_password_links')),
        sa.UniqueConstraint('token_hash', name=op.f('uq_password_links_token_hash')),
    )
    op.create_index(op.f('ix_password_links_user_id'), 'password_links', ['user_id'], unique=False)


def downgrade():
    op.drop_index(op.f('ix_password_links_user_id'), table_name='password_links')
    op.drop_table('password_links')
    op.drop_column('accounts', 'request_links_allowed')
    op.drop_column('accounts', 'link_password_required')
    op.drop_column('accounts', 'link_max_days')
    op.drop_column('users', 'must_change_password')
    op.drop_column('users', 'last_login_at')
