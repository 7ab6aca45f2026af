"""file versions: count ingests that found the ciphertext missing; a `failed` state

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 10:30:00.000000

"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('file_versions', sa.Column('ingest_failures', sa.Integer(), server_default=sa.text('0'),
                                             nullable=False))
    op.drop_constraint(op.f('ck_file_versions_state'), 'file_versions', type_='check')
    op.create_check_constraint(op.f('ck_file_versions_state'), 'file_versions',
                               "state IN ('spooled', 'stored', 'failed')")


def downgrade():
    # A failed version goes back to waiting for its (lost) ciphertext, as before this revision.
    op.execute("UPDATE file_versions SET state = 'spooled' WHERE state = 'failed'")
    op.drop_constraint(op.f('ck_file_versions_state'), 'file_versions', type_='check')
    op.create_check_constraint(op.f('ck_file_versions_state'), 'file_versions',
                               "state IN ('spooled', 'stored')")
    op.drop_column('file_versions', 'ingest_failures')
