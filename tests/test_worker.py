"""Job workers: claimed once, retried when their worker dies, dismissed, idempotent, resilient;
their kernels started ahead, one job each.

Workers run as real ``opencdms worker`` processes (so they can be killed with SIGKILL) on the
test's own database; their notebooks are copies of ``tests/notebooks_fixtures`` (``sleeps``,
``plain``) and notebooks written here: ``tally`` appends its job id to a file, so a job run
twice shows twice; ``waits`` writes its kernel's process id to ``kernels/<job id>`` and waits;
``whoami`` writes what its kernel knows of its job.  A kernel started for its job is found by
the job id in its process environment (``OPENCDMS_JOB_ID``); a worker's kernels are started
ahead, before their job, so theirs is found by what ``waits`` wrote.  That is how a test sees a
kernel stop.

The tests that start workers run on the embedded PostgreSQL only (a kernel start per job makes
them the slowest of the suite; the claim, heartbeat and stale-job SQL they rely on is tested on
both servers below, without processes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

import nbformat
import pytest
import sqlalchemy as sa

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import job as job_table
from opencdms_kernel.notebooks import (
    IdempotencyKeyConflictError,
    Job,
    JobStateError,
    JobStatus,
    NotebookRegistry,
    dismiss_job,
    ensure_kernel_spec,
    get_job,
    list_jobs,
    run_notebook,
    submit_job,
    wait_for_job,
)
from opencdms_kernel.db.schema import station
from opencdms_kernel.notebooks.execution import (
    PER_JOB_VARIABLES,
    KernelPool,
    job_environment_code,
    kernel_environment,
    pool_key,
)
from opencdms_kernel.notebooks.jobs import (
    claim_next_job,
    finish_job,
    heartbeat_jobs,
    release_job,
    requeue_stale_jobs,
    seconds_until_due,
)
from opencdms_kernel.notebooks.worker import Worker
from opencdms_kernel.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "notebooks_fixtures"
EMBEDDED_ONLY = pytest.mark.parametrize("postgres_server", ["embedded"], indirect=True)
STALE = timedelta(seconds=3)

pytestmark = pytest.mark.postgres


# --------------------------------------------------------------------------- helpers


def _notebook(title: str, description: str, *cells: object) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"display_name": "OpenCDMS (Python 3)", "language": "python", "name": "opencdms"},
        "language_info": {"name": "python"},
    })
    notebook.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\n{description}"), *cells]
    return notebook


def write_tally(folder: Path) -> None:
    """A trivial notebook that appends its job id to <OPENCDMS_HOME>/tally.txt."""
    notebook = _notebook(
        "Tally", "Appends the job id to a file, to count runs.",
        nbformat.v4.new_code_cell(
            "import os\n"
            "with open(os.path.join(os.environ['OPENCDMS_HOME'], 'tally.txt'), 'a') as tally:\n"
            "    tally.write(os.environ['OPENCDMS_JOB_ID'] + '\\n')"
        ),
    )
    nbformat.write(notebook, folder / "tally.ipynb")


def write_waits(folder: Path) -> None:
    """``sleeps``, whose first cell writes its kernel's process id to <OPENCDMS_HOME>/kernels/<job id>."""
    notebook = _notebook(
        "Waits", "Waits, for the worker tests.",
        nbformat.v4.new_code_cell("seconds: float = 30.0  # how long to wait", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os, time\n"
            "kernels = os.path.join(os.environ['OPENCDMS_HOME'], 'kernels')\n"
            "os.makedirs(kernels, exist_ok=True)\n"
            "with open(os.path.join(kernels, os.environ['OPENCDMS_JOB_ID']), 'w') as record:\n"
            "    record.write(str(os.getpid()))\n"
            "time.sleep(seconds)"
        ),
    )
    nbformat.write(notebook, folder / "waits.ipynb")


def write_whoami(folder: Path) -> None:
    """A notebook that appends, as one JSON line to <OPENCDMS_HOME>/whoami.jsonl, its kernel's
    process id, the job id and user it sees, and whether the module it imports was imported
    before its first cell (by a kernel started ahead)."""
    notebook = _notebook(
        "Who am I", "Who am I, for the worker tests.",
        nbformat.v4.new_code_cell("import json, os, sys\nahead = 'opencdms_kernel.settings' in sys.modules"),
        nbformat.v4.new_code_cell("from opencdms_kernel.notebooks import current_job_id\n"
                                  "from opencdms_kernel.settings import Settings"),
        nbformat.v4.new_code_cell(
            "line = {'pid': os.getpid(), 'job': current_job_id(), 'user': Settings().user, 'ahead': ahead,\n"
            "        'environment_user': os.environ.get('OPENCDMS_USER')}\n"
            "with open(os.path.join(os.environ['OPENCDMS_HOME'], 'whoami.jsonl'), 'a') as out:\n"
            "    out.write(json.dumps(line) + '\\n')"
        ),
    )
    nbformat.write(notebook, folder / "whoami.ipynb")


@pytest.fixture
def worker_settings(settings: Settings, tmp_path: Path) -> Settings:
    """This test's settings with its own notebooks, a fast heartbeat and a short stale timeout."""
    ensure_kernel_spec(ROOT)
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("sleeps", "plain"):
        (folder / f"{name}.ipynb").write_bytes((FIXTURES / f"{name}.ipynb").read_bytes())
    write_tally(folder)
    write_waits(folder)
    write_whoami(folder)
    return settings.model_copy(update={
        "notebook_dir": folder, "job_heartbeat_interval": timedelta(seconds=0.5), "job_stale_timeout": STALE,
        "job_retry_backoff": timedelta(seconds=0.5), "job_max_attempts": 3,
    })


@pytest.fixture
def registry(worker_settings: Settings) -> NotebookRegistry:
    return NotebookRegistry(worker_settings.notebook_folder)


class Workers:
    """``opencdms worker`` processes started by a test, all stopped at its end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, concurrency: int = 1, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "opencdms_kernel.cli", "worker", "--concurrency", str(concurrency)],
            env=kernel_environment(self.settings) | {"COLUMNS": "200"} | (env or {}), cwd=self.settings.home,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.processes.append(process)
        banner = process.stdout.readline()  # type: ignore[union-attr]
        assert "worker: running jobs" in banner, banner + process.stdout.read()  # type: ignore[union-attr]
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def workers(worker_settings: Settings) -> Iterator[Workers]:
    started = Workers(worker_settings)
    yield started
    started.stop_all()


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout} s still not: {what}")
        time.sleep(0.1)


def processes_with(variable: bytes) -> list[int]:
    """The live processes whose environment (as they were started) has ``variable`` (``NAME=value``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if variable in environment.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kernel_pids(job_id: uuid.UUID, home: Path | None = None) -> list[int]:
    """The running kernels of a job: a kernel started for it (its environment names the job),
    and the kernel whose process id the job's ``waits`` notebook wrote under ``home``."""
    found = processes_with(f"OPENCDMS_JOB_ID={job_id}".encode())
    recorded = home / "kernels" / str(job_id) if home is not None else None
    if recorded is not None and recorded.exists() and (text := recorded.read_text()).isdigit():
        if alive(int(text)) and int(text) not in found:
            found.append(int(text))
    return found


def started_ahead(pid: int) -> bool:
    """Whether kernel ``pid`` was started before its job: its process environment names no job."""
    return b"OPENCDMS_JOB_ID=" not in Path(f"/proc/{pid}/environ").read_bytes()


def status_of(datastore: Datastore, job: Job) -> JobStatus:
    return get_job(datastore, job.id).status


def running_with_kernel(datastore: Datastore, job: Job, home: Path | None = None) -> Job | None:
    current = get_job(datastore, job.id)
    return current if current.status is JobStatus.RUNNING and kernel_pids(job.id, home) else None


# --------------------------------------------------------------------------- workers at work


@EMBEDDED_ONLY
def test_two_workers_run_each_of_100_jobs_exactly_once(
    worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry, workers: Workers
) -> None:
    workers.start(concurrency=2)
    workers.start(concurrency=2)
    jobs = [submit_job(datastore, registry, "tally", {}, trigger="test", user="t") for _ in range(100)]

    finished = [wait_for_job(datastore, job.id, timeout=300) for job in jobs]

    assert [job.status for job in finished] == [JobStatus.SUCCESSFUL] * 100, [j.error for j in finished if j.error]
    # A kernel that did not start on the busy machine is another attempt, never a second run.
    assert all(job.attempts >= 1 for job in finished)
    tally = (worker_settings.home / "tally.txt").read_text().split()
    assert sorted(tally) == sorted(str(job.id) for job in jobs)  # each ran, none twice
    assert len({job.worker for job in finished}) == 2  # both took their share


# The first kernel of each job dies before the notebook's first cell: a kernel started for its
# job (only kernels have OPENCDMS_JOB_ID) as it starts, a kernel started ahead as it is given
# its job's id.
DIES_ONCE = """
import os

def _die_once(job):
    marker = os.path.join(os.environ["OPENCDMS_HOME"], "kernel-started-" + job)
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)

if os.environ.get("OPENCDMS_JOB_ID"):
    _die_once(os.environ["OPENCDMS_JOB_ID"])
else:
    _set = os._Environ.__setitem__

    def _set_and_maybe_die(self, key, value):
        _set(self, key, value)
        if key == "OPENCDMS_JOB_ID":
            _die_once(value)

    os._Environ.__setitem__ = _set_and_maybe_die
"""


@EMBEDDED_ONLY
def test_a_kernel_that_dies_at_start_is_another_attempt_not_a_failure(
    worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry, workers: Workers, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DIES_ONCE)
    workers.start(env={"PYTHONPATH": str(site)})
    job = submit_job(datastore, registry, "tally", {}, trigger="test", user="t")

    done = wait_for_job(datastore, job.id, timeout=120)
    assert done.status is JobStatus.SUCCESSFUL, done.error
    assert done.attempts == 2
    assert (worker_settings.home / "tally.txt").read_text().split() == [str(job.id)]

    # With no attempt left, the same death is the job's failure, with the reason.
    last = submit_job(datastore, registry, "tally", {}, trigger="test", user="t", max_attempts=1)
    failed = wait_for_job(datastore, last.id, timeout=120)
    assert failed.status is JobStatus.FAILED and "Kernel died" in (failed.error or ""), failed.error


@EMBEDDED_ONLY
def test_a_job_whose_worker_is_killed_is_retried_by_another(
    worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry, workers: Workers
) -> None:
    home = worker_settings.home
    first = workers.start()
    job = submit_job(datastore, registry, "waits", {"seconds": 3}, trigger="test", user="t")
    running = wait_until(lambda: running_with_kernel(datastore, job, home), 30, "the job running in a kernel")
    orphan = kernel_pids(job.id, home)
    killed_at = time.monotonic()
    first.send_signal(signal.SIGKILL)
    first.wait()
    workers.start()

    # Noticed by its stale heartbeat, put back, run again by the other worker: no attempt lost.
    done = wait_for_job(datastore, job.id, timeout=60)
    assert done.status is JobStatus.SUCCESSFUL, done.error
    assert done.attempts == 2 and done.worker != running.worker  # type: ignore[union-attr]
    assert done.error is None
    assert time.monotonic() - killed_at < STALE.total_seconds() + 3 + 15  # stale, backoff, the second run
    # The dead worker's kernel went with it (ipykernel watches its parent).
    wait_until(lambda: not any(alive(pid) for pid in orphan), 10, "the orphaned kernel gone")


@EMBEDDED_ONLY
def test_a_job_whose_workers_keep_dying_fails_with_the_reason_after_max_attempts(
    worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry, workers: Workers
) -> None:
    job = submit_job(datastore, registry, "waits", {"seconds": 60}, trigger="test", user="t", max_attempts=2)
    for attempt in (1, 2):
        worker = workers.start()
        wait_until(lambda: (current := running_with_kernel(datastore, job, worker_settings.home))
                   and current.attempts == attempt, 30, f"attempt {attempt} running")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        killed_at = time.monotonic()
    workers.start()  # a live worker notices the stale heartbeat

    failed = wait_for_job(datastore, job.id, timeout=30)
    assert failed.status is JobStatus.FAILED
    assert time.monotonic() - killed_at < STALE.total_seconds() + 10
    assert failed.attempts == 2 and failed.finished_at is not None and failed.worker is None
    assert "stopped answering during attempt 2 of 2" in (failed.error or "")
    assert "2 of 2 attempts used" in (failed.message or "")


@EMBEDDED_ONLY
def test_dismissing_jobs_an_accepted_one_never_runs_a_running_ones_kernel_stops(
    worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry, workers: Workers
) -> None:
    waiting = submit_job(datastore, registry, "tally", {}, trigger="test", user="t")
    assert dismiss_job(datastore, waiting.id).status is JobStatus.DISMISSED
    assert dismiss_job(datastore, waiting.id).status is JobStatus.DISMISSED  # twice: the same answer
    workers.start()

    home = worker_settings.home
    long = submit_job(datastore, registry, "waits", {"seconds": 120}, trigger="test", user="t")
    wait_until(lambda: running_with_kernel(datastore, long, home), 30, "the long job running in a kernel")
    [kernel] = kernel_pids(long.id, home)
    assert started_ahead(kernel)  # the worker's kernel, started before the job: that one must stop
    dismissed = dismiss_job(datastore, long.id)
    assert dismissed.status is JobStatus.DISMISSED and dismissed.message == "dismissed while running"
    wait_until(lambda: not alive(kernel), 10, "the dismissed job's kernel gone")

    # The worker is free again, and recorded nothing over the dismissal.
    after = submit_job(datastore, registry, "plain", {}, trigger="test", user="t")
    assert wait_for_job(datastore, after.id, timeout=60).status is JobStatus.SUCCESSFUL
    assert get_job(datastore, long.id).status is JobStatus.DISMISSED
    never = get_job(datastore, waiting.id)
    assert never.attempts == 0 and never.started_at is None
    assert not (worker_settings.home / "tally.txt").exists()  # the dismissed tally never ran
    with pytest.raises(JobStateError, match="has finished"):
        dismiss_job(datastore, after.id)


@EMBEDDED_ONLY
def test_a_worker_that_loses_its_database_connections_recovers(
    worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry, workers: Workers
) -> None:
    workers.start()
    job = submit_job(datastore, registry, "waits", {"seconds": 3}, trigger="test", user="t")
    wait_until(lambda: running_with_kernel(datastore, job, worker_settings.home), 30, "the job running in a kernel")

    # Every other session of this database is cut: the worker's pool, its listener.
    with datastore.engine.connect() as connection:
        cut = connection.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar_one()
    assert cut >= 2

    assert wait_for_job(datastore, job.id, timeout=60).status is JobStatus.SUCCESSFUL
    after = submit_job(datastore, registry, "plain", {}, trigger="test", user="t")
    done = wait_for_job(datastore, after.id, timeout=60)
    assert done.status is JobStatus.SUCCESSFUL and done.attempts == 1


@EMBEDDED_ONLY
def test_a_worker_stopped_gives_its_running_job_back_and_stops_the_kernel(
    worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry, workers: Workers
) -> None:
    home = worker_settings.home
    worker = workers.start()
    job = submit_job(datastore, registry, "waits", {"seconds": 120}, trigger="test", user="t")
    wait_until(lambda: running_with_kernel(datastore, job, home), 30, "the job running in a kernel")
    kernels = kernel_pids(job.id, home)

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0

    back = get_job(datastore, job.id)
    assert back.status is JobStatus.ACCEPTED and back.attempts == 0 and back.worker is None
    assert "released by worker" in (back.message or "")
    wait_until(lambda: not any(alive(pid) for pid in kernels), 10, "the kernel gone")


# --------------------------------------------------------------------------- kernels started ahead


class RunningWorker:
    """A :class:`Worker` in a thread of this process (its pool can be looked at), stopped at the end."""

    def __init__(self, settings: Settings, datastore: Datastore, registry: NotebookRegistry, **kwargs: object) -> None:
        self.worker = Worker(settings, datastore, registry=registry, **kwargs)  # type: ignore[arg-type]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), name="test-worker")

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the worker did not stop"


@EMBEDDED_ONLY
def test_each_job_runs_in_a_kernel_started_ahead_for_it_alone_with_its_own_user_and_id(
    worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry
) -> None:
    users = ["ana", "ben", "ana", "cleo", "ben"]
    with RunningWorker(worker_settings, datastore, registry, concurrency=1) as worker:
        jobs = [submit_job(datastore, registry, "whoami", {}, trigger="test", user=user) for user in users]
        finished = [wait_for_job(datastore, job.id, timeout=120) for job in jobs]
        served = worker.kernels.handed_out if worker.kernels is not None else 0
    assert [job.status for job in finished] == [JobStatus.SUCCESSFUL] * len(jobs), [j.error for j in finished]
    assert served == len(jobs)  # every job ran in a kernel of the pool

    seen = [json.loads(line) for line in (worker_settings.home / "whoami.jsonl").read_text().splitlines()]
    by_job = {line["job"]: line for line in seen}
    for job in jobs:
        line = by_job[str(job.id)]
        # The job's own user and id, never the worker's or another job's, and the notebook's
        # module imported before its first cell.
        assert (line["user"], line["environment_user"], line["ahead"]) == (job.requested_by, job.requested_by, True)
    assert len({line["pid"] for line in seen}) == len(jobs)  # one kernel per job, never two jobs in one
    assert not any(alive(line["pid"]) for line in seen)  # each shut down after its job


@EMBEDDED_ONLY
def test_a_worker_set_to_keep_no_kernels_ahead_starts_one_per_job(
    worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry
) -> None:
    settings = worker_settings.model_copy(update={"worker_kernels_ahead": 0})
    with RunningWorker(settings, datastore, registry, concurrency=1) as worker:
        jobs = [submit_job(datastore, registry, "whoami", {}, trigger="test", user=user) for user in ("ana", "ben")]
        finished = [wait_for_job(datastore, job.id, timeout=120) for job in jobs]
        assert worker.kernels is None
    assert [job.status for job in finished] == [JobStatus.SUCCESSFUL] * 2, [j.error for j in finished]
    seen = [json.loads(line) for line in (settings.home / "whoami.jsonl").read_text().splitlines()]
    # A kernel started for the job: nothing imported before its first cell, the job's own user.
    assert sorted((line["user"], line["ahead"]) for line in seen) == [("ana", False), ("ben", False)]


@EMBEDDED_ONLY
def test_the_audit_names_the_user_who_asked_for_an_ingest_run_in_a_pooled_kernel(
    worker_settings: Settings, datastore: Datastore, bucket: Bucket
) -> None:
    (worker_settings.notebook_folder / "ingest_file.ipynb").write_bytes((ROOT / "notebooks" / "ingest_file.ipynb").read_bytes())
    registry = NotebookRegistry(worker_settings.notebook_folder)
    with datastore.engine.begin() as connection:
        connection.execute(sa.insert(station).values(wigos_id="0-20000-0-60001", name="A", longitude=10.0,
                                                     latitude=5.0, elevation=10.0, timezone="UTC"))
    requests = {"incoming/ana.csv": "ana", "incoming/ben.csv": "ben"}
    for number, key in enumerate(requests):
        bucket.write_bytes(key, f"station,element,time,value\n0-20000-0-60001,TMAX,2020-01-0{number + 1},25.5\n".encode())
    with RunningWorker(worker_settings, datastore, registry, concurrency=1) as worker:
        jobs = [submit_job(datastore, registry, "ingest_file", {"object_key": key}, trigger="test", user=user)
                for key, user in requests.items()]
        finished = [wait_for_job(datastore, job.id, timeout=180) for job in jobs]
        served = worker.kernels.handed_out if worker.kernels is not None else 0
    assert served == 2  # both ran in kernels of the pool
    assert [job.status for job in finished] == [JobStatus.SUCCESSFUL] * 2, [job.error for job in finished]
    with datastore.engine.connect() as connection:
        authors = dict(connection.execute(sa.text(
            "SELECT l.object_key, string_agg(DISTINCT o.changed_by, ',') FROM observation o "
            "JOIN ingest_ledger l ON l.id = o.ingest_id GROUP BY l.object_key")).all())
    assert authors == requests


@EMBEDDED_ONLY
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_stopped_worker_leaves_no_kernel_behind(
    sig: signal.Signals, worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry, workers: Workers
) -> None:
    mark = f"WORKER_TEST_MARK={uuid.uuid4().hex}"  # the kernels inherit it (it is no OPENCDMS_ setting)
    name, value = mark.split("=")
    worker = workers.start(concurrency=2, env={name: value})

    def kernels() -> list[int]:
        return [pid for pid in processes_with(mark.encode()) if pid != worker.pid]

    # Idle, the worker keeps a kernel started ahead for each of its two slots.
    wait_until(lambda: len(kernels()) >= 2, 60, "two kernels started ahead")
    job = submit_job(datastore, registry, "waits", {"seconds": 120}, trigger="test", user="t")
    wait_until(lambda: running_with_kernel(datastore, job, worker_settings.home), 30, "the job running in a kernel")

    worker.send_signal(sig)
    worker.wait(timeout=30)
    # SIGTERM and SIGINT: the worker stops them; SIGKILL: each kernel sees its parent gone.
    wait_until(lambda: not kernels(), 15, "no kernel of the stopped worker left")


@EMBEDDED_ONLY
def test_a_kernel_killed_while_it_waits_in_the_pool_costs_no_job(
    worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry
) -> None:
    with RunningWorker(worker_settings, datastore, registry, concurrency=1) as worker:
        # The pool's ready kernel (started, its modules imported), read from the pool itself:
        # from outside, a kernel still importing looks the same.
        ready = wait_until(lambda: worker.kernels is not None and list(worker.kernels._ready), 60,
                           "a kernel ready in the pool")
        killed = [kernel.manager.provisioner.process.pid for kernel in ready]  # type: ignore[union-attr]
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(alive(pid) for pid in killed), 10, "the waiting kernel gone")

        # The dead kernel is not handed out: the first job starts its own kernel, and the pool a
        # replacement, which the next job gets.
        jobs = []
        for user in ("ana", "ben"):
            job = submit_job(datastore, registry, "whoami", {}, trigger="test", user=user)
            jobs.append(wait_for_job(datastore, job.id, timeout=120))
    assert [job.status for job in jobs] == [JobStatus.SUCCESSFUL] * 2, [job.error for job in jobs]
    assert [job.attempts for job in jobs] == [1, 1]  # not a retry after a dead kernel's failure
    seen = [json.loads(line) for line in (worker_settings.home / "whoami.jsonl").read_text().splitlines()]
    assert [(line["user"], line["ahead"]) for line in seen] == [("ana", False), ("ben", True)]
    assert not {line["pid"] for line in seen} & set(killed)


def test_a_pool_serves_only_runs_with_its_environment_and_folder(tmp_path: Path) -> None:
    environment = {"PATH": "/usr/bin", "OPENCDMS_HOME": str(tmp_path), "OPENCDMS_USER": "worker"}
    pool = KernelPool(1, environment, tmp_path)  # never started: it starts no process
    assert pool.environment == {"PATH": "/usr/bin", "OPENCDMS_HOME": str(tmp_path)}  # no job's identity
    # A job's user and id are set in the kernel it is given; any other difference needs a kernel
    # of its own, and so does another folder.
    job = {**environment, "OPENCDMS_USER": "ana", "OPENCDMS_JOB_ID": str(uuid.uuid4())}
    assert pool_key(job, tmp_path) == pool_key(environment, tmp_path)
    assert pool_key({**job, "OPENCDMS_DATABASE_URL": "postgresql://elsewhere"}, tmp_path) != pool_key(job, tmp_path)
    assert pool_key(job, tmp_path / "other") != pool_key(job, tmp_path)
    started = time.monotonic()
    assert pool.take({**job, "OPENCDMS_DATABASE_URL": "postgresql://elsewhere"}, tmp_path, timeout=30) is None
    assert time.monotonic() - started < 1  # refused at once, not after waiting for a kernel
    assert pool.handed_out == 0
    pool.close()


def test_the_job_values_are_set_in_a_kernel_as_literals(tmp_path: Path) -> None:
    tricky = "o'brien \"\\n\n${HOME}');import os;os._exit(3)#"
    code = job_environment_code({PER_JOB_VARIABLES[0]: tricky, PER_JOB_VARIABLES[1]: None})
    shown = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, os\nprint(json.dumps(dict(os.environ)))"],
        env={"PATH": "/usr/bin", PER_JOB_VARIABLES[1]: "another job"}, capture_output=True, text=True, check=True)
    environment = json.loads(shown.stdout)
    assert environment[PER_JOB_VARIABLES[0]] == tricky and PER_JOB_VARIABLES[1] not in environment


# --------------------------------------------------------------------------- the queue's SQL, both servers


def test_the_same_idempotency_key_at_once_gives_one_job(datastore: Datastore, registry: NotebookRegistry) -> None:
    barrier = threading.Barrier(8)
    found: list[uuid.UUID] = []

    def submit() -> None:
        barrier.wait()
        found.append(submit_job(datastore, registry, "sleeps", {"seconds": 1}, trigger="test", user="t",
                                idempotency_key="incoming/aws/a.csv@etag-1").id)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and len(set(found)) == 1
    assert len(list_jobs(datastore)) == 1
    # The key again later, even after the job ended: the same job, nothing new to run.
    finished = claim_next_job(datastore, "w")
    assert finished is not None
    finish_job(datastore, finished, JobStatus.SUCCESSFUL, "done", None, {})
    again = submit_job(datastore, registry, "sleeps", {"seconds": 1.0}, trigger="test", user="t",
                       idempotency_key="incoming/aws/a.csv@etag-1")
    assert again.id == found[0] and again.status is JobStatus.SUCCESSFUL
    # The key for another request is refused, naming the job that has it.
    with pytest.raises(IdempotencyKeyConflictError, match=str(found[0])):
        submit_job(datastore, registry, "sleeps", {"seconds": 2}, trigger="test", user="t",
                   idempotency_key="incoming/aws/a.csv@etag-1")
    for bad in ("", "x" * 256, "tab\there"):
        with pytest.raises(Exception, match="idempotency key must be"):
            submit_job(datastore, registry, "plain", {}, trigger="test", user="t", idempotency_key=bad)
    assert len(list_jobs(datastore)) == 1


def test_two_claimers_at_once_never_take_one_job(datastore: Datastore, registry: NotebookRegistry) -> None:
    jobs = {submit_job(datastore, registry, "plain", {}, trigger="test", user="t").id for _ in range(40)}
    claimed: dict[str, list[uuid.UUID]] = {"a": [], "b": [], "c": []}
    barrier = threading.Barrier(3)

    def claim(worker: str) -> None:
        barrier.wait()
        while (job := claim_next_job(datastore, worker)) is not None:
            claimed[worker].append(job.id)

    threads = [threading.Thread(target=claim, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job_id for taken in claimed.values() for job_id in taken]
    assert sorted(every) == sorted(jobs)  # each job once, none left
    assert claim_next_job(datastore, "d") is None


def test_a_stale_job_is_retried_with_backoff_then_failed_and_its_old_worker_cannot_write(
    datastore: Datastore, registry: NotebookRegistry
) -> None:
    job = submit_job(datastore, registry, "plain", {}, trigger="test", user="t", max_attempts=2)

    def age_heartbeat() -> None:
        with datastore.engine.begin() as connection:
            connection.execute(sa.update(job_table).where(job_table.c.id == job.id)
                               .values(heartbeat_at=sa.func.now() - sa.text("interval '1 hour'")))

    first = claim_next_job(datastore, "ghost")
    assert first is not None and first.attempts == 1 and heartbeat_jobs(datastore, "ghost", {job.id}) == {job.id}
    assert requeue_stale_jobs(datastore, timedelta(minutes=5), timedelta(seconds=30)) == []  # fresh: kept
    age_heartbeat()
    [requeued] = requeue_stale_jobs(datastore, timedelta(minutes=5), timedelta(seconds=30))
    assert requeued.status is JobStatus.ACCEPTED and requeued.attempts == 1
    assert "retrying" in (requeued.message or "") and "ghost stopped answering" in (requeued.error or "")
    assert claim_next_job(datastore, "other") is None  # backing off
    assert 20 < (seconds_until_due(datastore) or 0) <= 30
    # The presumed dead worker wakes up: it holds nothing, and cannot record a result.
    assert heartbeat_jobs(datastore, "ghost", {job.id}) == set()
    assert finish_job(datastore, first, JobStatus.SUCCESSFUL, "late", None, {}) is None

    with datastore.engine.begin() as connection:
        connection.execute(sa.update(job_table).where(job_table.c.id == job.id).values(not_before=sa.func.now()))
    second = claim_next_job(datastore, "other")
    assert second is not None and second.attempts == 2 and second.error is None
    age_heartbeat()
    [failed] = requeue_stale_jobs(datastore, timedelta(minutes=5), timedelta(seconds=30))
    assert failed.status is JobStatus.FAILED and failed.finished_at is not None
    assert "other stopped answering during attempt 2 of 2" in (failed.error or "")
    assert get_job(datastore, job.id).status is JobStatus.FAILED


def test_release_and_waiting(datastore: Datastore, registry: NotebookRegistry) -> None:
    job = submit_job(datastore, registry, "plain", {}, trigger="test", user="t")
    started = time.monotonic()
    assert wait_for_job(datastore, job.id, timeout=0.5).status is JobStatus.ACCEPTED  # no worker: as it is
    assert time.monotonic() - started < 5
    claimed = claim_next_job(datastore, "w")
    assert claimed is not None and release_job(datastore, claimed)
    back = get_job(datastore, job.id)
    assert back.status is JobStatus.ACCEPTED and back.attempts == 0
    assert not release_job(datastore, claimed)  # not this attempt's any more

    again = claim_next_job(datastore, "w")
    assert again is not None

    def finish_soon() -> None:
        time.sleep(0.5)
        finish_job(datastore, again, JobStatus.SUCCESSFUL, "done", None, {})

    threading.Thread(target=finish_soon).start()
    assert wait_for_job(datastore, job.id, timeout=30).status is JobStatus.SUCCESSFUL  # woken by NOTIFY
    assert time.monotonic() - started < 10
    with pytest.raises(Exception, match="no job"):
        get_job(datastore, "not-a-uuid")
    assert [j.id for j in list_jobs(datastore, status="successful", limit=1, offset=0)] == [job.id]
    assert list_jobs(datastore, limit=1, offset=1) == []


def test_worker_settings_read_iso_8601_durations_and_refuse_a_stale_timeout_below_two_beats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(job_heartbeat_interval="PT2S", job_stale_timeout="PT1M", job_retry_backoff=1.5)
    assert settings.job_heartbeat_interval == timedelta(seconds=2)
    assert settings.job_stale_timeout == timedelta(minutes=1) and settings.job_retry_backoff == timedelta(seconds=1.5)
    # A worker or kernel rebuilds the settings from its environment: the durations survive the trip.
    for name, value in settings.as_environment().items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings
    with pytest.raises(ValueError, match="must be at least twice job_heartbeat_interval"):
        Settings(job_heartbeat_interval="PT10S", job_stale_timeout="PT15S")
    with pytest.raises(ValueError):
        Settings(job_heartbeat_interval="PT0S")


@EMBEDDED_ONLY
def test_a_direct_run_keeps_a_heartbeat_and_stops_when_dismissed(
    worker_settings: Settings, datastore: Datastore, registry: NotebookRegistry, bucket: Bucket
) -> None:
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_notebook, "sleeps", {"seconds": 120}, settings=worker_settings,
                              datastore=datastore, bucket=bucket, registry=registry)
        wait_until(lambda: list_jobs(datastore), 30, "the job recorded")
        [job] = list_jobs(datastore)
        wait_until(lambda: running_with_kernel(datastore, job), 30, "the job running in a kernel")
        beat = get_job(datastore, job.id).heartbeat_at
        wait_until(lambda: get_job(datastore, job.id).heartbeat_at != beat, 5, "a newer heartbeat")
        assert get_job(datastore, job.id).max_attempts == 1  # a direct run is not retried elsewhere
        dismiss_job(datastore, job.id)
        ended = running.result(timeout=30)
    assert ended.status is JobStatus.DISMISSED and ended.message == "dismissed while running"
    assert not kernel_pids(ended.id)


def test_an_idempotency_key_is_the_requesters_own(datastore, registry) -> None:  # type: ignore[no-untyped-def]
    """Another user's same key is another request: it neither returns nor blocks their job."""
    from opencdms_kernel.notebooks import count_jobs, submit_job

    first = submit_job(datastore, registry, "plain", {}, trigger="api", user="ana", idempotency_key="k-1")
    again = submit_job(datastore, registry, "plain", {}, trigger="api", user="ana", idempotency_key="k-1")
    other = submit_job(datastore, registry, "tally", {}, trigger="api", user="ben", idempotency_key="k-1")
    assert again.id == first.id and other.id != first.id and other.requested_by == "ben"
    assert count_jobs(datastore, process="plain") == 1 and count_jobs(datastore) == 2
