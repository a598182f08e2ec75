"""fleets, robots, deployment jobs and robot deployments

Revision ID: c9d2e8f4a6b1
Revises: aa6b9458a35a
"""

import sqlalchemy as sa
from alembic import op

revision = "c9d2e8f4a6b1"
down_revision = "aa6b9458a35a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleets",
        sa.Column("arn", sa.String(length=1224), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("arn", name=op.f("pk_fleets")),
    )
    op.create_index(op.f("ix_fleets_name"), "fleets", ["name"])
    op.create_index(op.f("ix_fleets_account_id"), "fleets", ["account_id"])

    op.create_table(
        "robots",
        sa.Column("arn", sa.String(length=1224), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("architecture", sa.String(length=16), nullable=False),
        sa.Column("greengrass_group_id", sa.String(length=1224), nullable=False),
        sa.Column("fleet_arn", sa.String(length=1224), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_deployment_job", sa.String(length=1224), nullable=True),
        sa.Column("last_deployment_time", sa.Float(), nullable=True),
        sa.Column("agent_seen_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("arn", name=op.f("pk_robots")),
    )
    op.create_index(op.f("ix_robots_name"), "robots", ["name"])
    op.create_index(op.f("ix_robots_account_id"), "robots", ["account_id"])
    op.create_index(op.f("ix_robots_fleet_arn"), "robots", ["fleet_arn"])

    op.create_table(
        "deployment_jobs",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("arn", sa.String(length=1224), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("fleet_arn", sa.String(length=1224), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("client_request_token", sa.String(length=64), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("is_sync", sa.Boolean(), nullable=False),
        sa.Column("wave_size", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_deployment_jobs")),
        sa.UniqueConstraint("arn", name=op.f("uq_deployment_jobs_arn")),
    )
    op.create_index(op.f("ix_deployment_jobs_account_id"), "deployment_jobs", ["account_id"])
    op.create_index(op.f("ix_deployment_jobs_fleet_arn"), "deployment_jobs", ["fleet_arn"])
    op.create_index(op.f("ix_deployment_jobs_status"), "deployment_jobs", ["status"])
    op.create_index(
        op.f("ix_deployment_jobs_client_request_token"), "deployment_jobs", ["client_request_token"]
    )

    op.create_table(
        "robot_deployments",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("robot_arn", sa.String(length=1224), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("previous_robot_status", sa.String(length=32), nullable=False),
        sa.Column("deployment_start_time", sa.Float(), nullable=True),
        sa.Column("deployment_finish_time", sa.Float(), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("last_report_seq", sa.Integer(), nullable=False),
        sa.Column("last_report_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "robot_arn", name=op.f("pk_robot_deployments")),
    )
    op.create_index(op.f("ix_robot_deployments_status"), "robot_deployments", ["status"])


def downgrade() -> None:
    op.drop_table("robot_deployments")
    op.drop_table("deployment_jobs")
    op.drop_table("robots")
    op.drop_table("fleets")
