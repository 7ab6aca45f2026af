"""audit export and notifications: the daily exports, chain checks, follows, notification choices

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 16:45:00.000000

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'audit_exports',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('account_id', sa.BigInteger(), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('csv_node_id', sa.BigInteger(), nullable=True),
        sa.Column('xlsx_node_id', sa.BigInteger(), nullable=True),
        sa.Column('events', sa.BigInteger(), nullable=False),
        sa.Column('chain_head', sa.LargeBinary(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_audit_exports_account_id_accounts'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['csv_node_id'], ['nodes.id'], name=op.f('fk_audit_exports_csv_node_id_nodes'),
                                ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['xlsx_node_id'], ['nodes.id'], name=op.f('fk_audit_exports_xlsx_node_id_nodes'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_exports')),
        sa.UniqueConstraint('account_id', 'day', name=op.f('uq_audit_exports_account_id_day')),
    )
    op.create_table(
        'chain_checks',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('account_id', sa.BigInteger(), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('events', sa.BigInteger(), nullable=False),
        sa.Column('head', sa.LargeBinary(length=32), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('checked_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_chain_checks_account_id_accounts'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_chain_checks')),
    )
    op.create_index(op.f('ix_chain_checks_account_id'), 'chain_checks', ['account_id'], unique=False)
    op.create_table(
        'follows',
        sa.Column('user_id', sa.BigInteger(), nullable=False),
        sa.Column('folder_id', sa.BigInteger(), nullable=False),
        sa.Column('pending', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.Column('pending_since', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_follows_user_id_users'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['folder_id'], ['nodes.id'], name=op.f('fk_follows_folder_id_nodes'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('user_id', 'folder_id', name=op.f('pk_follows')),
    )
    op.create_index(op.f('ix_follows_folder_id'), 'follows', ['folder_id'], unique=False)
    # NULL: the account's default.
    for column in ('notify_uploads', 'notify_alerts', 'notify_exports'):
        op.add_column('users', sa.Column(column, sa.Boolean(), nullable=True))
    for column, default in (('notify_uploads_default', 'true'), ('notify_alerts_default', 'true'),
                            ('notify_exports_default', 'false')):
        op.add_column('accounts', sa.Column(column, sa.Boolean(), server_default=sa.text(default), nullable=False))


def downgrade():
    for column in ('notify_uploads_default', 'notify_alerts_default', 'notify_exports_default'):
        op.drop_column('accounts', column)
    for column in ('notify_uploads', 'notify_alerts', 'notify_exports'):
        op.drop_column('users', column)
    op.drop_index(op.f('ix_follows_folder_id'), table_name='follows')
    op.drop_table('follows')
    op.drop_index(op.f('ix_chain_checks_account_id'), table_name='chain_checks')
    op.drop_table('chain_checks')
    op.drop_table('audit_exports')
