"""Workers: the only processes that run submitted notebook jobs (``opencdms worker``).

A worker claims accepted jobs from the ``job`` table (``FOR UPDATE SKIP LOCKED``, so several
workers on several machines sharing one datastore never take the same job), runs up to
``concurrency`` of them at once (threads; each notebook runs in its own kernel process), and
keeps their heartbeat.  It wakes when a job is submitted or dismissed (``LISTEN`` on the job
channel, fed by a trigger) and otherwise looks every heartbeat interval, which is also when it
gives up the jobs of workers that stopped answering (see :mod:`.jobs`): any worker does that
for all, so no job stays ``running`` after its worker died.

A lost database connection is survived: each step that fails is logged and tried again (the
listener reconnects, the claim loop backs off, results are written again), running notebooks go
on meanwhile.  On stop (``stop_event``, Ctrl-C, SIGTERM), the worker claims nothing more, gives
its running jobs back to the queue uncounted (:func:`~.jobs.release_job`) and stops their
kernels: a shutdown never fails a job nor leaves one running.

Its jobs run in kernels started ahead (:class:`~.execution.KernelPool`, one ready kernel per
slot by default), which have imported the project's modules that the registered notebooks import:
a job does not wait for a Python to start and import them.  Each kernel serves one job, then is
shut down while a replacement starts; the worker's stop shuts the pool's kernels down too.
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.notebooks.execution import KernelPool, stop_kernel
from opencdms_kernel.notebooks.jobs import (
    JOB_CHANNEL,
    Job,
    JobStatus,
    claim_next_job,
    release_job,
    requeue_stale_jobs,
    seconds_until_due,
)
from opencdms_kernel.notebooks.kernelspec import ensure_kernel_spec
from opencdms_kernel.notebooks.registry import NotebookRegistry, default_notebook_folder, open_registry
from opencdms_kernel.notebooks.runner import Heartbeat, run_claimed_job, run_environment, runner_name
from opencdms_kernel.settings import Settings

log = logging.getLogger(__name__)

# Pauses after the datastore failed to answer, longest last (then the heartbeat interval).
_RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0)
_MIN_PAUSE = 0.05
# The package whose modules a pooled kernel imports ahead: they read no setting when imported
# (settings are read when called), so a kernel started before its job gets none of its values.
_AHEAD_PACKAGE = "opencdms_kernel"


def run_worker(
    settings: Settings,
    concurrency: int | None = None,
    stop_event: threading.Event | None = None,
    *,
    datastore: Datastore | None = None,
    bucket: Bucket | None = None,
    registry: NotebookRegistry | None = None,
    warm_kernels: int | None = None,
) -> None:
    """Run jobs until ``stop_event`` is set (forever without one).

    ``concurrency`` defaults to ``settings.worker_concurrency``; ``datastore`` and ``bucket``
    are opened from ``settings`` when not given (``opencdms up`` passes its own), ``registry``
    is the shared registry of ``settings.notebook_folder``; ``warm_kernels``: kernels kept
    started ahead (default: ``settings.worker_kernels_ahead``, else one per job run at once;
    0: every job starts its own).
    """
    owned = datastore is None
    datastore = datastore or Datastore.open(settings)
    try:
        Worker(settings, datastore, bucket=bucket, registry=registry, concurrency=concurrency,
               warm_kernels=warm_kernels).run(stop_event or threading.Event())
    finally:
        if owned:
            datastore.close()


class Worker:
    """One worker: a claim loop, a pool of ``concurrency`` threads, a heartbeat, a listener."""

    def __init__(
        self,
        settings: Settings,
        datastore: Datastore,
        *,
        bucket: Bucket | None = None,
        registry: NotebookRegistry | None = None,
        concurrency: int | None = None,
        warm_kernels: int | None = None,
    ) -> None:
        self.settings = settings
        self.datastore = datastore
        self.bucket = bucket or open_bucket(settings)
        self.registry = registry or open_registry(default_notebook_folder(settings))
        self.concurrency = concurrency or settings.worker_concurrency
        if self.concurrency < 1:
            raise ValueError(f"a worker runs at least one job at once, not {self.concurrency}")
        if warm_kernels is None:
            warm_kernels = settings.worker_kernels_ahead
        self.warm_kernels = self.concurrency if warm_kernels is None else warm_kernels
        self.kernels: KernelPool | None = None
        self.name = runner_name("worker")
        self.interval = settings.job_heartbeat_interval.total_seconds()
        self._wake = threading.Event()
        self._running: dict[uuid.UUID, Job] = {}
        self._running_lock = threading.Lock()

    # ------------------------------------------------------------------ the loop

    def run(self, stop_event: threading.Event) -> None:
        """Claim and run jobs until ``stop_event`` is set; then give back what still runs."""
        log.info("worker %s: %d at once, heartbeat every %.1f s", self.name, self.concurrency, self.interval)
        listener = _Listener(self.datastore, self._notified, stop_event)
        # The stop wakes the claim loop at once rather than at its next look.
        threading.Thread(target=lambda: (stop_event.wait(), self._wake.set()), daemon=True).start()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="opencdms-job")
        self.kernels = self._start_kernel_pool()
        try:
            with Heartbeat(self.datastore, self.name, self.interval) as heartbeat:
                self._heartbeat = heartbeat
                listener.start()
                try:
                    self._loop(pool, stop_event)
                finally:
                    self._shut_down(pool)
                    listener.join()
        finally:
            if self.kernels is not None:
                self.kernels.close()  # after the jobs' threads: every kernel is retired or ready
        log.info("worker %s stopped", self.name)

    def _start_kernel_pool(self) -> KernelPool | None:
        """The worker's kernels started ahead (None when ``warm_kernels`` is 0)."""
        if self.warm_kernels < 1:
            return None
        ensure_kernel_spec(self.settings.home)
        modules = ahead_modules(self.registry)
        kernels = KernelPool(self.warm_kernels, run_environment(self.settings, self.datastore), self.registry.folder,
                             modules=modules)
        kernels.start()
        log.info("worker %s: %d kernel(s) started ahead, importing %s", self.name, self.warm_kernels,
                 ", ".join(modules) or "nothing")
        return kernels

    def _loop(self, pool: ThreadPoolExecutor, stop_event: threading.Event) -> None:
        failures = 0
        while not stop_event.is_set():
            # Cleared before looking, so that a wake-up arriving while this round runs is kept
            # and ends the pause below at once.
            self._wake.clear()
            try:
                requeue_stale_jobs(self.datastore, self.settings.job_stale_timeout, self.settings.job_retry_backoff)
                self._claim(pool, stop_event)
                pause = self.interval
                if self._free_slots():
                    due = seconds_until_due(self.datastore)
                    if due is not None:
                        # Not below a floor: a due job locked by another worker's claim
                        # (SKIP LOCKED passed it) must not make this loop spin.
                        pause = min(pause, max(due, _MIN_PAUSE))
                failures = 0
            except sa.exc.SQLAlchemyError as exc:
                pause = _RETRY_PAUSES[min(failures, len(_RETRY_PAUSES) - 1)]
                failures += 1
                log.warning("worker %s: the datastore did not answer (%s); trying again in %.1f s",
                            self.name, exc.__class__.__name__, pause)
            # A notification, a finished job or the stop wakes the loop early.
            self._wake.wait(pause)

    def _claim(self, pool: ThreadPoolExecutor, stop_event: threading.Event) -> None:
        while self._free_slots() and not stop_event.is_set():
            job = claim_next_job(self.datastore, self.name)
            if job is None:
                return
            log.info("worker %s: running job %s (%s), attempt %d of %d", self.name, job.id, job.process,
                     job.attempts, job.max_attempts)
            with self._running_lock:
                self._running[job.id] = job
            self._heartbeat.add(job.id)
            pool.submit(self._run_job, job).add_done_callback(self._job_done)

    def _run_job(self, job: Job) -> Job:
        try:
            return run_claimed_job(job, settings=self.settings, datastore=self.datastore, bucket=self.bucket,
                                   registry=self.registry, kernels=self.kernels)
        finally:
            self._heartbeat.discard(job.id)
            with self._running_lock:
                self._running.pop(job.id, None)

    def _job_done(self, future: Future[Job]) -> None:
        exc = future.exception()
        if exc is not None:
            # run_claimed_job records every failure of the notebook; this is the worker's own
            # (the datastore gone for longer than the retries): the stale timeout recovers the job.
            log.error("worker %s: a job could not be recorded", self.name, exc_info=exc)
        else:
            job = future.result()
            log.info("worker %s: job %s %s", self.name, job.id, job.status.value)
        self._wake.set()  # a slot is free

    def _free_slots(self) -> int:
        with self._running_lock:
            return self.concurrency - len(self._running)

    def _notified(self, payload: str) -> None:
        _, _, status = payload.partition(" ")
        if status == JobStatus.DISMISSED.value:
            self._heartbeat.beat_now()  # one of ours? its kernel stops now, not at the next beat
        elif status == JobStatus.ACCEPTED.value or status not in _JOB_STATES:
            # A job to claim (new, or put back); or the listener reconnected and may have
            # missed one.  Other changes (claims, results) leave this worker nothing to do:
            # waking every worker for each of them would cost each a round of queries.
            self._wake.set()

    def _shut_down(self, pool: ThreadPoolExecutor) -> None:
        with self._running_lock:
            running = list(self._running.values())
        for job in running:
            try:
                if release_job(self.datastore, job):
                    log.info("worker %s: job %s given back to the queue", self.name, job.id)
            except sa.exc.SQLAlchemyError as exc:  # its heartbeat stops: it is retried when stale
                log.warning("worker %s: job %s could not be given back (%s)", self.name, job.id, exc)
            stop_kernel(str(job.id))
        pool.shutdown(wait=True)


_JOB_STATES = {status.value for status in JobStatus}


def ahead_modules(registry: NotebookRegistry) -> tuple[str, ...]:
    """The modules of this project that the registered notebooks import (those a pooled kernel
    imports ahead), sorted; a name with no module file in the package is left out (it may name
    something else than a module, and the notebook reports it itself)."""
    import opencdms_kernel

    package = Path(opencdms_kernel.__file__).parent
    found = set()
    for info in registry.notebooks():
        for name in info.imported_modules():
            parts = name.split(".")
            if parts[0] != _AHEAD_PACKAGE:
                continue
            place = package.joinpath(*parts[1:])
            if len(parts) == 1 or place.with_suffix(".py").is_file() or (place / "__init__.py").is_file():
                found.add(name)
    return tuple(sorted(found))


class _Listener(threading.Thread):
    """LISTEN on the job channel, calling ``on_notify(payload)`` for each notification, in a
    connection of its own that is opened again whenever it breaks."""

    def __init__(self, datastore: Datastore, on_notify: Any, stop_event: threading.Event) -> None:
        super().__init__(name="opencdms-job-listener", daemon=True)
        self.datastore = datastore
        self.on_notify = on_notify
        self.stop_event = stop_event

    def run(self) -> None:
        import psycopg
        from psycopg import sql

        failures = 0
        while not self.stop_event.is_set():
            try:
                with psycopg.connect(self.datastore.libpq_uri, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(JOB_CHANNEL)))
                    if failures:
                        self.on_notify(" reconnected")  # something may have been missed: look now
                    failures = 0
                    while not self.stop_event.is_set():
                        for note in connection.notifies(timeout=1.0):
                            self.on_notify(note.payload)
            except psycopg.Error as exc:
                pause = _RETRY_PAUSES[min(failures, len(_RETRY_PAUSES) - 1)]
                failures += 1
                log.warning("job listener: %s; listening again in %.1f s", exc.__class__.__name__, pause)
                self.stop_event.wait(pause)
