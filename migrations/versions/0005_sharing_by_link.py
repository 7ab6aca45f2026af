"""sharing by link: request links, link passwords, arrival notices

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 16:40:00.000000

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def _permissions(table, values):
    op.drop_constraint(op.f(f'ck_{table}_permission'), table, type_='check')
    op.create_check_constraint(op.f(f'ck_{table}_permission'), table,
                               "permission IN (" + ", ".join(f"'{v}'" for v in values) + ")")


def upgrade():
    # A request link ("send me files") lets a visitor upload and never see the folder.
    _permissions('shares', ('read', 'write', 'request'))
    _permissions('share_links', ('read', 'write', 'request'))
    op.add_column('share_links', sa.Column('password_hash', sa.Text(), nullable=True))
    # Files that arrived through the share's links since its owner was last told.
    op.add_column('shares', sa.Column('arrivals_pending', sa.Integer(), server_default=sa.text('0'), nullable=False))
    op.add_column('shares', sa.Column('arrivals_since', sa.DateTime(timezone=True), nullable=True))


def downgrade():
    op.drop_column('shares', 'arrivals_since')
    op.drop_column('shares', 'arrivals_pending')
    op.drop_column('share_links', 'password_hash')
    op.execute("DELETE FROM share_links WHERE permission = 'request'")
    op.execute("DELETE FROM shares WHERE permission = 'request'")
    _permissions('share_links', ('read', 'write'))
    _permissions('shares', ('read', 'write'))
