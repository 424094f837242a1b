"""A recorded run: a job claimed, its notebook executed (:mod:`.execution`), the result recorded
(:mod:`.jobs`).  Used by the workers (:mod:`.worker`) and by the direct, in-process run of the
command line (:func:`run_notebook`).

One run:

1. The request is validated against the notebook's declared parameters (registry).  Nothing
   is written and no kernel starts before this passes.
2. The job is claimed (``running``, one more attempt, this runner's name as its worker) and
   its heartbeat is kept while it runs (:class:`Heartbeat`), so that a run on a machine that
   dies is noticed and retried, and a dismissed run's kernel is stopped.
3. The notebook runs in an ``opencdms`` kernel of its own whose environment carries the run's
   settings (``OPENCDMS_*``), the requesting user (``OPENCDMS_USER``, named by the audit
   trail) and the job id (``OPENCDMS_JOB_ID``); ``OPENCDMS_DATABASE_URL`` is the server the
   runner is connected to (for the embedded mode, the running private server), so a notebook
   never starts a second embedded PostgreSQL.  A worker's runs take that kernel from its
   :class:`~.execution.KernelPool` (started ahead, given the job's user and id before the first
   cell, shut down after the run); other runs, and runs the pool cannot serve, start one.
4. The executed notebook (partial, with papermill's error marker, when a cell failed) and its
   HTML are saved under ``runs/<job id>/`` in the bucket, the kernel's own output as
   ``kernel.log`` when there is any; the outputs the notebook recorded with
   :func:`~opencdms_kernel.notebooks.record_output` become ``job.outputs``; the job ends
   ``successful`` or ``failed`` with the cell's exception as ``error``.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Any, Callable, Mapping

import sqlalchemy as sa

from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.notebooks.errors import NotebookRequestError
from opencdms_kernel.notebooks.execution import (
    Execution,
    KernelPool,
    execute_notebook,
    kernel_environment,
    save_run,
    stop_kernel,
    stop_was_requested,
    tracked_run,
)
from opencdms_kernel.notebooks.jobs import (
    Job,
    JobStatus,
    claim_job,
    finish_job,
    get_job,
    heartbeat_jobs,
    requeue_stale_jobs,
    retry_job,
    submit_job,
)
from opencdms_kernel.notebooks.kernelspec import ensure_kernel_spec
from opencdms_kernel.notebooks.outputs import RecordedOutput, recorded_outputs
from opencdms_kernel.notebooks.registry import NotebookRegistry, default_notebook_folder, open_registry
from opencdms_kernel.settings import Settings

log = logging.getLogger(__name__)


def run_environment(settings: Settings, datastore: Datastore, job: Job | None = None) -> dict[str, str]:
    """The kernel environment of ``job``'s run (without a job: what every run of this runner
    shares, which a worker's kernel pool starts its kernels with)."""
    return kernel_environment(
        settings, database_url=datastore.url.render_as_string(hide_password=False),
        user=job.requested_by if job is not None else None, job_id=str(job.id) if job is not None else None,
    )


def runner_name(kind: str) -> str:
    """A name for one runner, unique across machines and processes: ``host:pid:kind-xxxxxx``."""
    return f"{socket.gethostname()}:{os.getpid()}:{kind}-{uuid.uuid4().hex[:6]}"


def run_notebook(
    name: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    settings: Settings,
    datastore: Datastore | None = None,
    bucket: Bucket | None = None,
    registry: NotebookRegistry | None = None,
    trigger: str = "manual",
    user: str | None = None,
    timeout: float | None = None,
) -> Job:
    """Validate, record and run the notebook ``name`` in this process; returns the finished job.

    A bad request raises :class:`NotebookRequestError` before anything is written or started.
    A notebook that fails is not an exception here: the job comes back ``failed`` with the
    error.  ``datastore``/``bucket`` are opened from ``settings`` when not given; ``registry``
    defaults to the shared registry of ``settings.notebook_folder``; ``timeout`` limits each cell (s).
    """
    registry = registry or open_registry(default_notebook_folder(settings))
    registry.validate(name, parameters or {})  # refuse a bad request before opening anything
    owned = datastore is None
    datastore = datastore or Datastore.open(settings)
    try:
        # A direct run also gives up the jobs of dead workers (and of dead direct runs), so that
        # an installation running no worker still never keeps a job `running` for ever.
        requeue_stale_jobs(datastore, settings.job_stale_timeout, settings.job_retry_backoff)
        # One attempt: a direct run is not retried by workers when this process dies, it fails.
        job = submit_job(datastore, registry, name, parameters, trigger=trigger, user=user or settings.user,
                         max_attempts=1)
        return execute_job(job, settings=settings, datastore=datastore, bucket=bucket, registry=registry,
                           timeout=timeout)
    finally:
        if owned:
            datastore.close()


def execute_job(
    job: Job | uuid.UUID | str,
    *,
    settings: Settings,
    datastore: Datastore,
    bucket: Bucket | None = None,
    registry: NotebookRegistry | None = None,
    timeout: float | None = None,
) -> Job:
    """Claim the ``accepted`` job and run it here, keeping its heartbeat; returns the job as it
    ended.  A job that is not ``accepted`` any more raises :class:`JobStateError`."""
    claimed = claim_job(datastore, job.id if isinstance(job, Job) else job, runner_name("direct"))
    with Heartbeat(datastore, claimed.worker or "", settings.job_heartbeat_interval.total_seconds()) as heartbeat:
        heartbeat.add(claimed.id)
        return run_claimed_job(claimed, settings=settings, datastore=datastore, bucket=bucket, registry=registry,
                               timeout=timeout)


def run_claimed_job(
    job: Job,
    *,
    settings: Settings,
    datastore: Datastore,
    bucket: Bucket | None = None,
    registry: NotebookRegistry | None = None,
    timeout: float | None = None,
    kernels: KernelPool | None = None,
) -> Job:
    """Run a job this runner has claimed and record how it ended; returns the job as recorded.

    A failing cell, a cell timeout or a kernel that dies end the job ``failed`` (returned, not
    raised).  When the job stopped being this attempt's meanwhile (dismissed, or given up as
    stale), nothing is recorded and the job is returned as it is.  An interruption (Ctrl-C)
    fails the job, then goes on.  ``kernels``: the pool the run takes its kernel from, when it
    has one for this run's environment (else the run starts its own).
    """
    registry = registry or open_registry(default_notebook_folder(settings))
    bucket = bucket or open_bucket(settings)
    try:
        # The notebook may have changed since the job was accepted: check the request again.
        info, checked = registry.validate(job.process, job.parameters)
    except NotebookRequestError as exc:
        return _finish(datastore, job, JobStatus.FAILED, "refused", str(exc), {})
    execution = Execution()
    job_id = str(job.id)
    environment = run_environment(settings, datastore, job)
    # Taken inside tracked_run: a stop asked for while the pool hands the kernel over kills it.
    with tracked_run(job_id), ExitStack() as closing:
        pooled = kernels.take(environment, info.path.parent) if kernels is not None else None
        # The kernel process's own stdout/stderr (ipykernel's log, start-up failures) go to a file
        # kept with the run, not to the caller's terminal; cell output is in the notebook.  A
        # pooled kernel's output went to its own file since it started: that is the run's log.
        kernel_log = closing.enter_context(pooled.log if pooled is not None else tempfile.TemporaryFile())
        try:
            ensure_kernel_spec(settings.home)
            try:
                execute_notebook(info.notebook, checked, execution=execution, input_path=info.path,
                                 output_url=bucket.url(job.notebook_key), environment=environment,
                                 kernel_log=kernel_log, timeout=timeout, kernel=pooled)
            finally:
                if pooled is not None:
                    kernels.retire(pooled)  # type: ignore[union-attr]  # one job per kernel; off the run's path
            outputs = recorded_outputs(execution.notebook)
            save_run(bucket, job, execution.notebook, kernel_log)
        except Exception as exc:
            # The kernel died or did not start (or was stopped), a cell timed out, the bucket
            # refused a write: the job ends failed with the cause (the traceback goes to the log).
            stopped = stop_was_requested(job_id)
            if not stopped:
                log.exception("job %s (%s) failed outside the notebook", job.id, job.process)
            reason = f"{type(exc).__name__}: {exc}"
            if not stopped and execution.cells_started == 0:
                # The kernel did not start (a busy machine, a kernel killed at birth): nothing of
                # the notebook ran, so another attempt is safe while attempts are left.
                retried = retry_job(datastore, job, reason, settings.job_retry_backoff)
                if retried is not None:
                    return retried
            return _fail_outside(datastore, bucket, job, execution.notebook, kernel_log, reason)
        except BaseException:
            # Interrupted (Ctrl-C, shutdown): record it, then let the interruption go on.
            _fail_outside(datastore, bucket, job, execution.notebook, kernel_log, "interrupted")
            raise
    if execution.error is not None:
        error = execution.error
        return _finish(datastore, job, JobStatus.FAILED, f"failed in cell {error.cell}", error.text, outputs)
    recorded = f"{len(outputs)} output{'' if len(outputs) == 1 else 's'} recorded"
    return _finish(datastore, job, JobStatus.SUCCESSFUL, recorded, None, outputs)


# Writing a result survives a short loss of the database (a restart, a failover): the worker
# keeps the job's heartbeat meanwhile, so nobody else takes the job over.
_FINISH_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0)


def _finish(
    datastore: Datastore, job: Job, status: JobStatus, message: str, error: str | None,
    outputs: Mapping[str, RecordedOutput],
) -> Job:
    for pause in (*_FINISH_RETRIES, None):
        try:
            finished = finish_job(datastore, job, status, message, error, outputs)
            return finished if finished is not None else get_job(datastore, job.id)
        except sa.exc.OperationalError:
            if pause is None:
                raise
            log.warning("job %s: the datastore did not answer; recording the result again in %s s", job.id, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def _fail_outside(
    datastore: Datastore, bucket: Bucket, job: Job, notebook: Any, kernel_log: Any, error: str
) -> Job:
    """Record a failure that did not come from a cell, keeping what ran."""
    if notebook is not None:
        try:
            save_run(bucket, job, notebook, kernel_log)
        except Exception:  # the original failure is what the job reports; this one is logged
            log.exception("job %s: the partial notebook could not be saved", job.id)
    outputs = recorded_outputs(notebook) if notebook is not None else {}
    return _finish(datastore, job, JobStatus.FAILED, "failed outside the notebook", error, outputs)


class Heartbeat:
    """Keeps the heartbeat of the jobs one runner is running, every ``interval`` seconds, in a
    thread of its own; a job the runner no longer holds (dismissed, or given up as stale) has
    its kernel stopped.

    A beat that cannot reach the database is logged and tried again at the next one: the jobs
    keep running, and only a loss longer than the stale timeout gets them retried elsewhere.
    """

    def __init__(self, datastore: Datastore, worker: str, interval: float,
                 on_lost: Callable[[uuid.UUID], object] | None = None) -> None:
        self.datastore = datastore
        self.worker = worker
        self.interval = interval
        self.on_lost = on_lost or (lambda job_id: stop_kernel(str(job_id)))
        self._jobs: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._now = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {worker}", daemon=True)

    def add(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._jobs.add(job_id)

    def discard(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._jobs.discard(job_id)

    def jobs(self) -> set[uuid.UUID]:
        with self._lock:
            return set(self._jobs)

    def beat_now(self) -> None:
        """Beat at once (e.g. a job was dismissed: its kernel should stop without waiting)."""
        self._now.set()

    def beat(self) -> set[uuid.UUID]:
        """Renew the heartbeats once; returns the jobs found lost (and stopped)."""
        jobs = self.jobs()
        held = heartbeat_jobs(self.datastore, self.worker, jobs)
        lost = jobs - held
        for job_id in lost:
            if job_id in self.jobs():  # not finished meanwhile
                log.warning("job %s is no longer run by %s (dismissed or taken over): stopping it", job_id, self.worker)
                self.discard(job_id)
                self.on_lost(job_id)
        return lost

    def _run(self) -> None:
        while not self._stop.is_set():
            self._now.wait(self.interval)
            self._now.clear()
            if self._stop.is_set():
                return
            try:
                self.beat()
            except sa.exc.SQLAlchemyError as exc:
                log.warning("heartbeat of %s failed (will retry): %s", self.worker, exc)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._now.set()
        self._thread.join()
