"""The job table as a queue: idempotency, attempts, heartbeats, backoff, notifications.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

Workers (``opencdms worker``, notebooks/worker.py) claim ``accepted`` jobs with
``FOR UPDATE SKIP LOCKED`` and keep a heartbeat while they run them; a job whose worker stopped
answering is put back (or failed after ``max_attempts``) by whichever worker notices first.

- ``idempotency_key`` (unique per requester): the same execution request twice gives the one job.
- ``attempts`` / ``max_attempts``: runs started so far, and how many may be.
- ``worker`` / ``heartbeat_at``: who runs the job and when it last said so.
- ``not_before``: a retried job waits for its backoff before it may be claimed again.
- ``job_notify`` (AFTER INSERT, and AFTER UPDATE of the status): ``pg_notify('opencdms_job',
  '<id> <status>')``, which wakes the workers (a new job) and whoever waits for a job to end.
  A trigger, not the submitting code, so that every writer wakes them.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE job
    ADD COLUMN idempotency_key text,
    ADD COLUMN attempts       integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    ADD COLUMN max_attempts   integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    ADD COLUMN worker         text,
    ADD COLUMN heartbeat_at   timestamptz,
    ADD COLUMN not_before     timestamptz NOT NULL DEFAULT now(),
    -- A key is the requester's own: another user's same key is another request.
    ADD CONSTRAINT job_idempotency_key UNIQUE (requested_by, idempotency_key);

-- What a worker looks for: the accepted jobs, oldest due first; the running ones' heartbeats.
CREATE INDEX job_queue ON job (not_before, created_at) WHERE status = 'accepted';
CREATE INDEX job_running ON job (heartbeat_at) WHERE status = 'running';
CREATE INDEX job_process_created_at ON job (process, created_at);

CREATE FUNCTION job_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM pg_notify('opencdms_job', NEW.id::text || ' ' || NEW.status);
    RETURN NULL;
END
$$;

CREATE TRIGGER job_notify_insert AFTER INSERT ON job
    FOR EACH ROW EXECUTE FUNCTION job_notify();
CREATE TRIGGER job_notify_status AFTER UPDATE OF status ON job
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION job_notify();
"""

DOWNGRADE = """
DROP TRIGGER job_notify_status ON job;
DROP TRIGGER job_notify_insert ON job;
DROP FUNCTION job_notify();
DROP INDEX job_process_created_at;
DROP INDEX job_running;
DROP INDEX job_queue;
ALTER TABLE job
    DROP CONSTRAINT job_idempotency_key,
    DROP COLUMN not_before, DROP COLUMN heartbeat_at, DROP COLUMN worker,
    DROP COLUMN max_attempts, DROP COLUMN attempts, DROP COLUMN idempotency_key;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
