"""The job record: one row of the ``job`` table per process run, and its state transitions.

The ``job`` table is both the OGC API - Processes record and the queue the workers claim from
(migration 0006).  States and who moves a job between them::

    submit_job ──► accepted ──claim (a worker, or a direct run)──► running ──finish──► successful | failed
                      │  ▲                                           │
                      │  └──── requeue_stale_jobs (heartbeat stale, attempts left; after a backoff)
                      │                                              └─ (no attempts left) ──► failed
                      └──────────── dismiss_job ─────────────────────┴──────────────────────► dismissed

- A job is claimed by one worker only (``FOR UPDATE SKIP LOCKED``); the claim counts an
  attempt and stamps ``worker`` and ``heartbeat_at``.
- While it runs, its worker renews ``heartbeat_at`` (:func:`heartbeat_jobs`).  A job whose
  heartbeat is older than the stale timeout lost its worker (kill -9, machine gone): any worker
  puts it back after a backoff (doubling per attempt), or fails it with the reason when
  ``max_attempts`` are used up.  A job is never left ``running`` by a worker that died.
- A result is recorded only by the worker that holds the attempt (:func:`finish_job`), so a
  worker that was presumed dead cannot overwrite a rerun, a dismissal or a failure.
- Dismissing an accepted job stops it before it runs; dismissing a running job marks it
  ``dismissed`` at once, and its worker, seeing it is no longer running it, stops the kernel.
- Every insert and status change notifies channel :data:`JOB_CHANNEL` with ``"<id> <status>"``
  (a trigger, migration 0006): workers wake for new jobs, :func:`wait_for_job` for a result.

Times are the database server's (``clock_timestamp()``), so workers on several machines agree
on what is stale whatever their own clocks say.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from time import monotonic
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import job as job_table
from opencdms_kernel.errors import ConflictError
from opencdms_kernel.notebooks.errors import JobNotFoundError, NotebookRequestError
from opencdms_kernel.notebooks.outputs import RecordedOutput
from opencdms_kernel.notebooks.registry import NotebookRegistry

RUNS_PREFIX = "runs/"
JOB_CHANNEL = "opencdms_job"
"""The PostgreSQL notification channel of job changes (payload ``"<job id> <status>"``)."""
DEFAULT_MAX_ATTEMPTS = 3
MAX_IDEMPOTENCY_KEY_LENGTH = 255


class JobStatus(str, Enum):
    """The states of a job (those of OGC API - Processes)."""

    ACCEPTED = "accepted"
    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    DISMISSED = "dismissed"

    @property
    def finished(self) -> bool:
        """True for the states a job never leaves."""
        return self in (JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.DISMISSED)


@dataclass(frozen=True)
class Job:
    """One run of a notebook, as recorded in the ``job`` table."""

    id: uuid.UUID
    process: str
    parameters: dict[str, Any]
    trigger: str
    requested_by: str
    status: JobStatus
    message: str | None
    error: str | None
    outputs: dict[str, RecordedOutput]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    idempotency_key: str | None = None
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    worker: str | None = None
    heartbeat_at: datetime | None = None
    not_before: datetime | None = None

    @property
    def notebook_key(self) -> str:
        """Bucket key of the executed notebook."""
        return f"{RUNS_PREFIX}{self.id}/{self.process}.ipynb"

    @property
    def html_key(self) -> str:
        """Bucket key of the executed notebook rendered as HTML."""
        return f"{RUNS_PREFIX}{self.id}/{self.process}.html"

    @property
    def kernel_log_key(self) -> str:
        """Bucket key of the kernel process's own output (written when there was any)."""
        return f"{RUNS_PREFIX}{self.id}/kernel.log"

    def as_dict(self) -> dict[str, Any]:
        """The job as JSON-ready values (for APIs and messages)."""

        def stamp(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": str(self.id), "process": self.process, "parameters": self.parameters,
            "trigger": self.trigger, "requested_by": self.requested_by, "status": self.status.value,
            "message": self.message, "error": self.error,
            "outputs": {name: output.as_dict() for name, output in self.outputs.items()},
            "notebook_key": self.notebook_key, "html_key": self.html_key,
            "created_at": self.created_at.isoformat(), "started_at": stamp(self.started_at),
            "finished_at": stamp(self.finished_at), "idempotency_key": self.idempotency_key,
            "attempts": self.attempts, "max_attempts": self.max_attempts, "worker": self.worker,
            "heartbeat_at": stamp(self.heartbeat_at), "not_before": stamp(self.not_before),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Job":
        """The job of one ``job`` table row."""
        outputs = {
            name: RecordedOutput(name, entry["key"], entry.get("media_type"), entry.get("title"))
            for name, entry in (row["outputs"] or {}).items()
        }
        return cls(
            id=row["id"], process=row["process"], parameters=dict(row["parameters"] or {}),
            trigger=row["trigger"], requested_by=row["requested_by"], status=JobStatus(row["status"]),
            message=row["message"], error=row["error"], outputs=outputs, created_at=row["created_at"],
            started_at=row["started_at"], finished_at=row["finished_at"],
            idempotency_key=row["idempotency_key"], attempts=row["attempts"], max_attempts=row["max_attempts"],
            worker=row["worker"], heartbeat_at=row["heartbeat_at"], not_before=row["not_before"],
        )


class JobStateError(ConflictError):
    """The job is not in a state that allows the request (it already ran, it has finished…)."""


class IdempotencyKeyConflictError(ConflictError):
    """An idempotency key already names a job of another notebook or other parameters."""

    def __init__(self, key: str, existing: Job) -> None:
        self.key = key
        self.existing = existing
        super().__init__(
            f"idempotency key {key!r} was already used for job {existing.id} "
            f"(notebook '{existing.process}' with other parameters): a new request needs a new key"
        )


# --------------------------------------------------------------------------- requests

# The statements of a submission, built once with bind parameters: SQLAlchemy keeps a reused
# statement's cache key and compiled form, where a statement built per call with its values
# had both made again (about a third of the API's work for one run request).
_SUBMITTED = ("process", "parameters", "trigger", "requested_by", "status", "idempotency_key", "max_attempts")
_SUBMIT = (
    pg_insert(job_table)
    .values({name: sa.bindparam(name, type_=job_table.c[name].type) for name in _SUBMITTED})
    .on_conflict_do_nothing(index_elements=[job_table.c.requested_by, job_table.c.idempotency_key])
    .returning(*job_table.c)
)
_BY_KEY = sa.select(job_table).where(job_table.c.requested_by == sa.bindparam("user"),
                                     job_table.c.idempotency_key == sa.bindparam("key"))


def submit_job(
    datastore: Datastore,
    registry: NotebookRegistry,
    name: str,
    parameters: Mapping[str, Any] | None,
    *,
    trigger: str,
    user: str,
    idempotency_key: str | None = None,
    max_attempts: int | None = None,
) -> Job:
    """Validate a request and record it as an ``accepted`` job for a worker to run.

    A bad request raises :class:`NotebookRequestError` before anything is written.  With an
    ``idempotency_key``, a request whose key ``user`` already used returns that job (whatever its
    state) and runs nothing; the same key for another notebook or other parameters raises
    :class:`IdempotencyKeyConflictError`.  Concurrent requests with one key give one job.
    ``max_attempts`` (default: the datastore's settings, else 3) limits the runs a job gets
    when its worker dies.  The insert notifies the workers (a trigger).
    """
    info, checked = registry.validate(name, parameters or {})
    if idempotency_key is not None:
        _check_idempotency_key(info.name, idempotency_key)
    attempts = max_attempts if max_attempts is not None else _configured_max_attempts(datastore)
    if attempts < 1:
        raise NotebookRequestError(info.name, None, f"max_attempts must be 1 or more, not {attempts}")
    values = dict(process=info.name, parameters=checked, trigger=trigger, requested_by=user,
                  status=JobStatus.ACCEPTED.value, idempotency_key=idempotency_key, max_attempts=attempts)
    with datastore.engine.begin() as connection:
        # ON CONFLICT waits for a concurrent insert of the same key to commit, then yields no
        # row, and the job it made is read back: one job per key, however many ask at once.
        row = connection.execute(_SUBMIT, values).mappings().one_or_none()
        if row is None:
            row = connection.execute(_BY_KEY, {"user": user, "key": idempotency_key}).mappings().one()
            existing = Job.from_row(row)
            if existing.process != info.name or existing.parameters != checked:
                raise IdempotencyKeyConflictError(str(idempotency_key), existing)
            return existing
    return Job.from_row(row)


def get_job(datastore: Datastore, job_id: uuid.UUID | str) -> Job:
    """The job ``job_id``, or :class:`JobNotFoundError` (also for a malformed id)."""
    key = job_uuid(job_id)
    with datastore.engine.connect() as connection:
        row = connection.execute(sa.select(job_table).where(job_table.c.id == key)).mappings().one_or_none()
    if row is None:
        raise JobNotFoundError(str(job_id))
    return Job.from_row(row)


def list_jobs(
    datastore: Datastore,
    *,
    process: str | None = None,
    status: JobStatus | str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Job]:
    """The latest jobs first, optionally of one notebook and/or in one state; ``offset`` pages."""
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must not be negative")
    query = _job_filter(sa.select(job_table), process, status)
    query = query.order_by(job_table.c.created_at.desc(), job_table.c.id).limit(limit).offset(offset)
    with datastore.engine.connect() as connection:
        return [Job.from_row(row) for row in connection.execute(query).mappings()]


def count_jobs(datastore: Datastore, *, process: str | None = None, status: JobStatus | str | None = None) -> int:
    """How many jobs :func:`list_jobs` would page through with the same filters."""
    query = _job_filter(sa.select(sa.func.count()).select_from(job_table), process, status)
    with datastore.engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def _job_filter(query: sa.Select, process: str | None, status: JobStatus | str | None) -> sa.Select:
    if process is not None:
        query = query.where(job_table.c.process == process)
    if status is not None:
        query = query.where(job_table.c.status == JobStatus(status).value)
    return query


def dismiss_job(datastore: Datastore, job_id: uuid.UUID | str) -> Job:
    """Dismiss a job: an accepted one never runs, a running one is stopped.

    The job is ``dismissed`` when this returns; the worker running it notices within its
    heartbeat interval (at once when notifications reach it), stops the kernel and records
    nothing more.  Dismissing a dismissed job returns it unchanged; a job that has finished
    (successful or failed) raises :class:`JobStateError`.
    """
    key = job_uuid(job_id)
    current = job_table.c.status
    with datastore.engine.begin() as connection:
        row = connection.execute(
            sa.update(job_table)
            .where(job_table.c.id == key,
                   current.in_([JobStatus.ACCEPTED.value, JobStatus.RUNNING.value]))
            .values(status=JobStatus.DISMISSED.value, finished_at=sa.func.clock_timestamp(),
                    message=sa.case((current == JobStatus.RUNNING.value, "dismissed while running"),
                                    else_="dismissed before it ran"))
            .returning(*job_table.c)
        ).mappings().one_or_none()
    if row is not None:
        return Job.from_row(row)
    job = get_job(datastore, key)
    if job.status is JobStatus.DISMISSED:
        return job
    raise JobStateError(f"job {job.id} is {job.status.value}: it has finished and cannot be dismissed")


def wait_for_job(datastore: Datastore, job_id: uuid.UUID | str, timeout: float) -> Job:
    """The job once it has finished (successful, failed or dismissed), or as it is after
    ``timeout`` seconds.

    Waits on the job notifications (LISTEN), not by polling; the job is read again at least
    every few seconds all the same, so a notification lost with a dropped connection costs
    a delay, not a wrong answer.
    """
    import psycopg
    from psycopg import sql

    key = job_uuid(job_id)
    deadline = monotonic() + max(timeout, 0.0)
    with psycopg.connect(datastore.libpq_uri, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(JOB_CHANNEL)))
        while True:
            job = get_job(datastore, key)  # after LISTEN: a change from now on is heard
            remaining = deadline - monotonic()
            if job.status.finished or remaining <= 0:
                return job
            for note in listener.notifies(timeout=min(remaining, 5.0)):
                if note.payload.split(" ", 1)[0] == str(key):
                    break


# --------------------------------------------------------------------------- runs (workers)


def claim_job(datastore: Datastore, job_id: uuid.UUID | str, worker: str) -> Job:
    """Claim the accepted job ``job_id`` for ``worker`` (a direct run); :class:`JobStateError`
    when it is not accepted (already run, running, dismissed)."""
    key = job_uuid(job_id)
    with datastore.engine.begin() as connection:
        row = connection.execute(
            _claim(worker).where(job_table.c.id == key, job_table.c.status == JobStatus.ACCEPTED.value)
        ).mappings().one_or_none()
    if row is None:
        current = get_job(datastore, key)  # JobNotFoundError for an unknown id
        raise JobStateError(f"job {key} is {current.status.value}, not accepted: it cannot run again")
    return Job.from_row(row)


def claim_next_job(datastore: Datastore, worker: str) -> Job | None:
    """Claim the oldest accepted job that is due, for ``worker``; ``None`` when there is none.

    ``FOR UPDATE SKIP LOCKED``: workers claiming at the same moment take different jobs and
    never wait for each other.
    """
    due = (
        sa.select(job_table.c.id)
        .where(job_table.c.status == JobStatus.ACCEPTED.value, job_table.c.not_before <= sa.func.clock_timestamp())
        .order_by(job_table.c.not_before, job_table.c.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    with datastore.engine.begin() as connection:
        row = connection.execute(_claim(worker).where(job_table.c.id == due)).mappings().one_or_none()
    return Job.from_row(row) if row is not None else None


def seconds_until_due(datastore: Datastore) -> float | None:
    """Seconds until the earliest accepted job may be claimed (0 when one is due now, ``None``
    when there is no accepted job), by the database server's clock."""
    with datastore.engine.connect() as connection:
        wait = connection.execute(
            sa.select(sa.func.extract("epoch", sa.func.min(job_table.c.not_before) - sa.func.clock_timestamp()))
            .where(job_table.c.status == JobStatus.ACCEPTED.value)
        ).scalar_one()
    return None if wait is None else max(float(wait), 0.0)


def heartbeat_jobs(datastore: Datastore, worker: str, job_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Renew the heartbeat of ``worker``'s running jobs; returns those it still holds.

    A job missing from the answer was dismissed, or was given up as stale and requeued or
    failed: its worker must stop running it.
    """
    if not job_ids:
        return set()
    with datastore.engine.begin() as connection:
        held = connection.execute(
            sa.update(job_table)
            .where(job_table.c.id.in_(sorted(job_ids)), job_table.c.status == JobStatus.RUNNING.value,
                   job_table.c.worker == worker)
            .values(heartbeat_at=sa.func.clock_timestamp())
            .returning(job_table.c.id)
        ).scalars().all()
    return set(held)


def finish_job(
    datastore: Datastore,
    job: Job,
    status: JobStatus,
    message: str,
    error: str | None,
    outputs: Mapping[str, RecordedOutput],
) -> Job | None:
    """Record the end of the attempt ``job`` (as claimed); ``None`` when the job is no longer
    this attempt's (dismissed, or requeued or failed as stale meanwhile): nothing is written."""
    if not status.finished:
        raise ValueError(f"a job finishes successful, failed or dismissed, not {status.value}")
    with datastore.engine.begin() as connection:
        row = connection.execute(
            sa.update(job_table)
            .where(job_table.c.id == job.id, job_table.c.status == JobStatus.RUNNING.value,
                   job_table.c.worker == job.worker, job_table.c.attempts == job.attempts)
            .values(status=status.value, message=message, error=error,
                    outputs={name: output.as_dict() for name, output in outputs.items()},
                    finished_at=sa.func.clock_timestamp())
            .returning(*job_table.c)
        ).mappings().one_or_none()
    return Job.from_row(row) if row is not None else None


def release_job(datastore: Datastore, job: Job) -> bool:
    """Give back the attempt ``job`` (as claimed) of a worker that is shutting down: the job is
    accepted again, due at once, and the attempt is not counted.  False when the job was not
    this attempt's any more (finished, dismissed, taken over)."""
    with datastore.engine.begin() as connection:
        released = connection.execute(
            sa.update(job_table)
            .where(job_table.c.id == job.id, job_table.c.status == JobStatus.RUNNING.value,
                   job_table.c.worker == job.worker, job_table.c.attempts == job.attempts)
            .values(status=JobStatus.ACCEPTED.value, attempts=job_table.c.attempts - 1, worker=None,
                    heartbeat_at=None, started_at=None, not_before=sa.func.clock_timestamp(),
                    message=f"released by worker {job.worker} (shut down); to run again")
            .returning(job_table.c.id)
        ).first()
    return released is not None


def retry_job(datastore: Datastore, job: Job, reason: str, backoff: timedelta) -> Job | None:
    """Put back the attempt ``job`` (as claimed) that failed before its notebook started (the
    kernel did not start): accepted again after ``backoff`` doubled per attempt used, the
    attempt counted.  None when no attempt is left or the job is not this attempt's any more."""
    if job.attempts >= job.max_attempts:
        return None
    delay = backoff.total_seconds() * 2 ** max(min(job.attempts, 11) - 1, 0)
    with datastore.engine.begin() as connection:
        row = connection.execute(
            sa.update(job_table)
            .where(job_table.c.id == job.id, job_table.c.status == JobStatus.RUNNING.value,
                   job_table.c.worker == job.worker, job_table.c.attempts == job.attempts)
            .values(status=JobStatus.ACCEPTED.value, worker=None, heartbeat_at=None,
                    not_before=sa.func.clock_timestamp() + sa.func.make_interval(0, 0, 0, 0, 0, 0, delay),
                    message=f"retrying: the kernel did not start (attempt {job.attempts} of {job.max_attempts})",
                    error=reason)
            .returning(*job_table.c)
        ).mappings().first()
    return Job.from_row(row) if row is not None else None


# Backoff doubles per attempt, up to 2**10 times the base: a bound, not a schedule.
_STALE_SQL = sa.text(f"""
UPDATE job SET
    status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'accepted' END,
    message = CASE WHEN attempts >= max_attempts
                   THEN format('failed: its worker stopped answering, %s of %s attempts used', attempts, max_attempts)
                   ELSE format('retrying: its worker stopped answering (attempt %s of %s)', attempts, max_attempts)
              END,
    error = format('worker %s stopped answering during attempt %s of %s (last heartbeat %s)',
                   coalesce(worker, '(unknown)'), attempts, max_attempts,
                   coalesce(heartbeat_at, started_at)),
    finished_at = CASE WHEN attempts >= max_attempts THEN clock_timestamp() END,
    not_before = clock_timestamp()
                 + make_interval(secs => :backoff * power(2, greatest(least(attempts, 11) - 1, 0))),
    worker = NULL,
    heartbeat_at = NULL
WHERE id IN (
    SELECT id FROM job
    WHERE status = 'running'
      AND coalesce(heartbeat_at, started_at, created_at) < clock_timestamp() - make_interval(secs => :stale)
    FOR UPDATE SKIP LOCKED
)
RETURNING {", ".join(column.name for column in job_table.c)}
""")


def requeue_stale_jobs(datastore: Datastore, stale_after: timedelta, backoff: timedelta) -> list[Job]:
    """Put back the running jobs whose worker stopped answering (heartbeat older than
    ``stale_after``), due again after ``backoff`` doubled per attempt used; a job that has
    used all its attempts ends ``failed`` with the reason.  Returns the jobs changed."""
    with datastore.engine.begin() as connection:
        rows = connection.execute(
            _STALE_SQL, {"stale": stale_after.total_seconds(), "backoff": backoff.total_seconds()}
        ).mappings().all()
    return [Job.from_row(row) for row in rows]


# --------------------------------------------------------------------------- helpers


def job_uuid(job_id: uuid.UUID | str) -> uuid.UUID:
    """A job id as a UUID; :class:`JobNotFoundError` for text that is not one."""
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        raise JobNotFoundError(str(job_id)) from None


def _claim(worker: str) -> Any:
    """The UPDATE that makes a job this attempt's: running, by ``worker``, one more attempt."""
    return (
        sa.update(job_table)
        .values(status=JobStatus.RUNNING.value, started_at=sa.func.clock_timestamp(),
                heartbeat_at=sa.func.clock_timestamp(), worker=worker, attempts=job_table.c.attempts + 1,
                message=None, error=None, finished_at=None)
        .returning(*job_table.c)
    )


def _configured_max_attempts(datastore: Datastore) -> int:
    return datastore.settings.job_max_attempts if datastore.settings is not None else DEFAULT_MAX_ATTEMPTS


def _check_idempotency_key(notebook: str, key: Any) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        raise NotebookRequestError(
            notebook, None,
            f"an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters",
        )
