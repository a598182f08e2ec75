"""simulation job batches

Revision ID: b1a7c4e2d9f0
Revises: aa6b9458a35a
Create Date: 2026-11-28 19:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "b1a7c4e2d9f0"
down_revision = "aa6b9458a35a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "simulation_job_batches",
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("arn", sa.String(length=1224), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("client_request_token", sa.String(length=64), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_updated_at", sa.Float(), nullable=False),
        sa.Column("deadline_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_simulation_job_batches")),
        sa.UniqueConstraint("arn", name=op.f("uq_simulation_job_batches_arn")),
    )
    with op.batch_alter_table("simulation_job_batches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_simulation_job_batches_account_id"), ["account_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_simulation_job_batches_client_request_token"),
            ["client_request_token"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_simulation_job_batches_status"), ["status"], unique=False)

    op.create_table(
        "simulation_job_batch_requests",
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("job_arn", sa.String(length=1224), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("failed_at", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", "position", name=op.f("pk_simulation_job_batch_requests")),
    )


def downgrade() -> None:
    op.drop_table("simulation_job_batch_requests")
    with op.batch_alter_table("simulation_job_batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_simulation_job_batches_status"))
        batch_op.drop_index(batch_op.f("ix_simulation_job_batches_client_request_token"))
        batch_op.drop_index(batch_op.f("ix_simulation_job_batches_account_id"))
    op.drop_table("simulation_job_batches")
