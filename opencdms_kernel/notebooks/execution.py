"""Running one notebook in an ``opencdms`` kernel of its own through papermill, and saving the result.

papermill does the work through its public API: :func:`papermill.execute_notebook` injects the
parameters (cell ``injected-parameters``), runs the notebook with the engine registered here
under :data:`ENGINE_NAME`, and marks a failed cell as it always does (banner at the top, anchor
above the cell).  What the engine adds to papermill's own nbclient engine:

- The kernel process gets the run's environment (``start_kernel(env=…)``): the settings as
  ``OPENCDMS_*`` variables (never as injected parameters: database passwords and S3 keys must
  not end up in a saved notebook), the requesting user and the job id.  The caller's
  ``os.environ`` is read, never changed, so runs in threads cannot see each other's settings.
- Its working folder is given to the kernel, not taken by ``chdir`` (which papermill's ``cwd``
  does, for the whole process: wrong for runs in threads).
- The kernel's own output (ipykernel's log; why it did not start) goes to a file the caller
  keeps with the run, not to the caller's terminal.
- The executed notebook is kept in memory (no per-cell saves) and handed back even when the
  execution raised (a cell timeout, a dead kernel), so the caller can save what ran.
- The kernel of a job can be stopped from another thread (:func:`stop_kernel`): a dismissed
  job's kernel is killed, process group and all.

A kernel is either started for the run, or taken from a :class:`KernelPool` (a worker's):
started ahead, with the modules the notebooks import already imported, so that a run does not
wait for a Python to start and import them.  A pooled kernel serves exactly one job and is shut
down after it.  It is started without any job's identity: the run's values that differ from job
to job (:data:`PER_JOB_VARIABLES`: the requesting user the audit names, the job id) are set in
its ``os.environ`` by a silent execution before the notebook's first cell; every other variable
of its environment, and its working folder, must be the run's own, or the run starts a kernel of
its own.  Nothing a pooled kernel imports ahead reads those values at import (the project's
modules read settings only when called).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import nbformat
import papermill
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.exceptions import PapermillException, PapermillExecutionError

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.notebooks.jobs import Job
from opencdms_kernel.notebooks.kernelspec import DISPLAY_NAME, KERNEL_NAME
from opencdms_kernel.notebooks.outputs import JOB_ID_VARIABLE
from opencdms_kernel.settings import Settings

log = logging.getLogger(__name__)

ENGINE_NAME = "opencdms"
"""The papermill engine (``engine_name``) that runs notebooks for OpenCDMS."""
ENV_PREFIX = "OPENCDMS_"
KERNEL_START_TIMEOUT = 60.0
PER_JOB_VARIABLES = (f"{ENV_PREFIX}USER", JOB_ID_VARIABLE)
"""The kernel environment's variables that differ from job to job: a pooled kernel is started
without them and gets the job's values before the notebook's first cell."""


@dataclass(frozen=True)
class CellError:
    """The cell a notebook failed in: its execution count (``In [n]``, else its position) and
    the exception as ``Name: message``."""

    cell: int
    text: str


@dataclass
class Execution:
    """One execution: ``notebook`` is the notebook as far as it ran (set as soon as execution
    starts, so a caller still has it when :func:`execute_notebook` raises), ``error`` the
    failed cell, if one failed."""

    notebook: Any = None
    error: CellError | None = None
    cells_started: int = 0  # none when it failed: the kernel did not start (worth another attempt)


def execute_notebook(
    source: nbformat.NotebookNode,
    parameters: Mapping[str, Any],
    *,
    execution: Execution,
    input_path: Path,
    output_url: str,
    environment: Mapping[str, str],
    kernel_log: Any = None,
    timeout: float | None = None,
    kernel: "PooledKernel | None" = None,
) -> Execution:
    """Run a copy of ``source`` with ``parameters`` in an ``opencdms`` kernel of its own.

    ``environment`` is the kernel process's whole environment (see :func:`kernel_environment`);
    the kernel works in ``input_path``'s folder; ``output_url`` is recorded in the notebook's
    metadata as where it will be saved; ``timeout`` limits each cell (s).  A failing cell is
    not an exception: it is ``execution.error``.  A cell timeout, a kernel that died or did not
    start raise, with ``execution.notebook`` holding what ran.  ``kernel_log`` (a binary file)
    receives the kernel process's output.

    ``kernel``: a kernel taken from a :class:`KernelPool` for this run (:meth:`KernelPool.take`
    checked that it suits ``environment`` and the folder), given the run's
    :data:`PER_JOB_VARIABLES` first; the caller retires it afterwards.  Without one, a kernel is
    started with ``environment`` and shut down at the end.
    """
    _register_engine()
    job_id = environment.get(JOB_ID_VARIABLE)
    if kernel is not None and job_id:
        # From now on stop_kernel(job_id) kills this kernel (at once, if it was asked already).
        _kernel_started(job_id, kernel.group)
    try:
        papermill.execute_notebook(
            source, None, parameters=dict(parameters) or None, engine_name=ENGINE_NAME,
            request_save_on_cell_execute=False, kernel_name=KERNEL_NAME, language="python",
            progress_bar=False, log_output=False, start_timeout=KERNEL_START_TIMEOUT,
            # for the engine:
            execution=execution, source_path=str(input_path), output_url=output_url,
            kernel_env=dict(environment), kernel_cwd=str(input_path.parent), kernel_log=kernel_log,
            execution_timeout=timeout, pooled_kernel=kernel,
            autosave_cell_every=0,
        )
    except PapermillExecutionError as failed:
        # papermill has marked the cell in ``execution.notebook`` (the object it executed).
        count = failed.exec_count if failed.exec_count is not None else failed.cell_index
        execution.error = CellError(count, f"{failed.ename}: {failed.evalue}")
    return execution


def kernel_environment(
    settings: Settings,
    *,
    database_url: str | None = None,
    user: str | None = None,
    job_id: str | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The process environment of a notebook kernel: ``base`` (default ``os.environ``) without
    its ``OPENCDMS_*`` variables, plus ``settings`` as ``OPENCDMS_*`` variables.

    Stray ``OPENCDMS_*`` variables of the caller are dropped because ``settings`` is the truth
    for the run (an unset field must stay unset in the kernel).
    """
    environment = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(ENV_PREFIX)}
    environment.update(settings.as_environment())
    if database_url:
        environment[f"{ENV_PREFIX}DATABASE_URL"] = database_url
    if user:
        environment[f"{ENV_PREFIX}USER"] = user
    if job_id:
        environment[JOB_ID_VARIABLE] = job_id
    return environment


# --------------------------------------------------------------------------- stopping a job's kernel

_kernels_lock = threading.Lock()
_running: dict[str, int | None] = {}  # job id -> process group of its kernel (None: not started yet)
_stop_requested: set[str] = set()


@contextmanager
def tracked_run(job_id: str) -> Iterator[None]:
    """Mark job ``job_id`` as running in this process for the block, so that
    :func:`stop_kernel` can stop it from another thread at any moment of it."""
    with _kernels_lock:
        _running[job_id] = None
    try:
        yield
    finally:
        with _kernels_lock:
            _running.pop(job_id, None)
            _stop_requested.discard(job_id)


def stop_kernel(job_id: str) -> bool:
    """Kill the kernel of job ``job_id`` if it runs in this process (its whole process group):
    now, or as soon as it has started.  Returns whether the job runs here."""
    with _kernels_lock:
        if job_id not in _running:
            return False
        _stop_requested.add(job_id)
        group = _running[job_id]
    if group is not None:
        _kill_group(group)
    return True


def stop_was_requested(job_id: str) -> bool:
    """Whether :func:`stop_kernel` was called for job ``job_id`` during its run."""
    with _kernels_lock:
        return job_id in _stop_requested


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass  # gone already


def _kernel_started(job_id: str, group: int | None) -> None:
    """Record the process group of job ``job_id``'s kernel for :func:`stop_kernel`; kill it at
    once when the job was stopped while its kernel was starting (or being handed over)."""
    if not group:
        return
    with _kernels_lock:
        if job_id in _running:
            _running[job_id] = group
        stopping = job_id in _stop_requested
    if stopping:
        _kill_group(group)


class SettingsKernelManager(AsyncKernelManager):
    """A kernel manager whose ``start_kernel(env=…)`` environment wins over the spec's ``env``,
    and whose kernel :func:`stop_kernel` can kill.

    jupyter_client applies the kernel spec's ``env`` on top of the environment it is given; the
    ``opencdms`` spec sets ``OPENCDMS_HOME`` for people's own sessions, which must not override
    the home of the installation a run belongs to.
    """

    async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
        environment = kw.get("env")
        spec = self.kernel_spec
        if environment is not None and spec is not None and set(spec.env) & set(environment):
            fields = spec.to_dict()
            fields["env"] = {k: v for k, v in spec.env.items() if k not in environment}
            self._kernel_spec = KernelSpec(resource_dir=spec.resource_dir, **fields)
        if _curve_available():
            # Encrypt the kernel's sockets (CurveZMQ) when the kernel supports it: on a shared
            # machine, loopback TCP is readable by every local user.
            kw.setdefault("transport_encryption", "auto")
        await super().start_kernel(**kw)
        job_id = (environment or {}).get(JOB_ID_VARIABLE)
        if job_id:
            _kernel_started(job_id, self.process_group)

    @property
    def process_group(self) -> int | None:
        """The kernel's process group (jupyter_client starts it in a session of its own)."""
        provisioner = self.provisioner
        return getattr(provisioner, "pgid", None) or getattr(provisioner, "pid", None)


@cache
def _curve_available() -> bool:
    import zmq

    return bool(zmq.has("curve"))


class OpenCDMSEngine(NBClientEngine):
    """papermill's nbclient engine, with the kernel environment, folder and log of the run."""

    @classmethod
    def execute_notebook(  # type: ignore[override]
        cls, nb: Any, kernel_name: str, *, execution: Execution, source_path: str, output_url: str, **kwargs: Any
    ) -> Any:
        # What papermill records for a file it read and wrote (it was given a node and no path).
        nb.metadata.papermill["input_path"] = source_path
        nb.metadata.papermill["output_path"] = output_url
        nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": DISPLAY_NAME, "language": "python"}
        execution.notebook = nb  # executed in place: the caller keeps it if this raises
        return super().execute_notebook(nb, kernel_name, execution=execution, **kwargs)

    @classmethod
    def execute_managed_notebook(  # type: ignore[override]
        cls, nb_man: Any, kernel_name: str, log_output: bool = False, *, execution: Execution,
        kernel_env: dict[str, str], kernel_cwd: str, kernel_log: Any = None,
        start_timeout: float = KERNEL_START_TIMEOUT, execution_timeout: float | None = None,
        pooled_kernel: "PooledKernel | None" = None, **_: Any,
    ) -> Any:
        from papermill.log import logger as papermill_logger

        common = dict(kernel_name=kernel_name, timeout=execution_timeout, startup_timeout=start_timeout,
                      log=papermill_logger, log_output=log_output, resources={"metadata": {"path": kernel_cwd}},
                      on_cell_start=lambda **_: _count_cell(execution))
        if pooled_kernel is not None:
            # A started kernel: the client connects to it and leaves it running (the caller
            # retires it); the job's own values are set in it before the first cell.
            setup = job_environment_code({name: kernel_env.get(name) for name in PER_JOB_VARIABLES})
            client = _PooledKernelClient(nb_man, km=pooled_kernel.manager, job_setup=setup, **common)
            try:
                return client.execute()
            finally:
                # The client does not clean up a kernel it did not start: close its channels
                # (and so its sockets) here; the kernel itself is the pool's to shut down.
                if client.kc is not None:
                    client.kc.stop_channels()
                    client.kc = None
        client = PapermillNotebookClient(nb_man, kernel_manager_class=SettingsKernelManager, **common)
        # start_kernel(env=…, stdout=…, stderr=…) of the client's own kernel manager (Popen
        # arguments), which the client shuts down at the end.
        return client.execute(env=kernel_env, stdout=kernel_log, stderr=kernel_log)


class JobSetupError(RuntimeError):
    """A pooled kernel refused the job's own values (it is broken: the run fails before its first cell)."""


class _PooledKernelClient(PapermillNotebookClient):
    """papermill's client on a kernel that is already running, which first sets the job's own
    values in the kernel with a silent execution (no output, no execution count, no history)."""

    def __init__(self, nb_man: Any, *, job_setup: str, **kwargs: Any) -> None:
        super().__init__(nb_man, **kwargs)
        self.job_setup = job_setup

    def papermill_execute_cells(self) -> None:
        assert self.kc is not None
        reply = self.wait_for_reply(
            self.kc.execute(self.job_setup, silent=True, store_history=False, allow_stdin=False))
        content = (reply or {}).get("content", {})
        if content.get("status") != "ok":
            raise JobSetupError(f"the kernel did not take the job's environment: "
                                f"{content.get('ename', 'no reply')}: {content.get('evalue', '')}")
        super().papermill_execute_cells()


def job_environment_code(values: Mapping[str, str | None]) -> str:
    """Python that sets ``values`` in ``os.environ`` (None: removes the variable) and binds no
    name in the kernel's namespace; values are written as Python literals (``repr``)."""
    present = {name: value for name, value in values.items() if value is not None}
    lines = [f"__import__('os').environ.update({present!r})"] if present else []
    lines += [f"__import__('os').environ.pop({name!r}, None)" for name, value in values.items() if value is None]
    return "\n".join(lines) or "pass"


def _count_cell(execution: Execution) -> None:
    execution.cells_started += 1


_register_lock = threading.Lock()


def _register_engine() -> None:
    """Register :class:`OpenCDMSEngine` with papermill's engine registry (once)."""
    with _register_lock:
        try:
            papermill_engines.get_engine(ENGINE_NAME)
        except PapermillException:
            papermill_engines.register(ENGINE_NAME, OpenCDMSEngine)


# --------------------------------------------------------------------------- kernels started ahead


def shared_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` without :data:`PER_JOB_VARIABLES`: what every run of a pool's kernels shares."""
    return {k: v for k, v in environment.items() if k not in PER_JOB_VARIABLES}


def pool_key(environment: Mapping[str, str], cwd: str | Path) -> tuple[frozenset[tuple[str, str]], str]:
    """What a pooled kernel shares with the run it serves: its environment apart from
    :data:`PER_JOB_VARIABLES`, and its working folder."""
    return frozenset(shared_environment(environment).items()), str(cwd)


def ahead_code(modules: Sequence[str]) -> str:
    """Python that imports ``modules`` and binds no name in the kernel's namespace."""
    return f"[__import__('importlib').import_module(name) for name in {list(modules)!r}]"


class KernelWarmUpError(RuntimeError):
    """A pooled kernel could not import the modules it imports ahead."""


@dataclass(eq=False)
class PooledKernel:
    """A kernel a :class:`KernelPool` started ahead: its manager, and the file its process's
    output goes to (the run it serves keeps that file as its kernel log)."""

    manager: SettingsKernelManager
    log: Any

    @property
    def group(self) -> int | None:
        """The kernel's process group."""
        return self.manager.process_group

    def alive(self) -> bool:
        """Whether the kernel process still runs."""
        process = getattr(self.manager.provisioner, "process", None)
        return process is not None and process.poll() is None


class KernelPool:
    """Kernels started ahead of the runs they will serve (a worker's), each serving exactly one.

    ``size`` kernels are kept ready, started one after another by the pool's own thread (its
    asyncio loop starts and shuts down every kernel the pool made), each with ``environment``
    minus :data:`PER_JOB_VARIABLES`, in ``cwd``, and with ``modules`` imported by a silent
    execution.  :meth:`take` hands one out (a replacement starts at once), :meth:`retire` shuts
    a used one down in the background, :meth:`close` shuts every kernel down.  A start that
    fails is logged and tried again after a pause that doubles (up to a minute); meanwhile runs
    start kernels of their own.
    """

    def __init__(self, size: int, environment: Mapping[str, str], cwd: str | Path, *,
                 modules: Sequence[str] = (), start_timeout: float = KERNEL_START_TIMEOUT) -> None:
        if size < 1:
            raise ValueError(f"a kernel pool keeps at least one kernel, not {size}")
        self.size = size
        self.environment = shared_environment(environment)
        self.cwd = str(cwd)
        self.modules = tuple(modules)
        self.start_timeout = start_timeout
        self._key = pool_key(self.environment, self.cwd)
        self._state = threading.Condition()
        self._ready: deque[PooledKernel] = deque()
        self._live: set[PooledKernel] = set()  # started, not shut down yet: ready, serving, retiring
        self._starting = False
        self._closed = False
        self._failures = 0
        self.handed_out = 0  # kernels given to runs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="opencdms-kernel-pool", daemon=True)
        self._wanted = asyncio.Event()  # set (in the loop) when a kernel was taken or the pool closes
        self._shutdowns: set[asyncio.Task[None]] = set()  # only touched in the loop's thread
        self._filler: Future[None] | None = None
        self._fill_task: asyncio.Task[None] | None = None  # the filler, as a task of the pool's loop

    # ------------------------------------------------------------------ for the runs

    def start(self) -> None:
        """Start the pool's thread and its first kernels."""
        self._thread.start()
        self._filler = asyncio.run_coroutine_threadsafe(self._fill(), self._loop)
        self._filler.add_done_callback(self._filler_ended)

    def take(self, environment: Mapping[str, str], cwd: str | Path, timeout: float | None = None) -> PooledKernel | None:
        """A ready kernel for a run with ``environment`` in ``cwd``, waiting up to ``timeout``
        (default: the start timeout) for one being started.  None when the pool has none to give
        (closed, its starts failing, or the run's environment or folder is not the pool's):
        the run then starts a kernel of its own."""
        if pool_key(environment, cwd) != self._key:
            log.info("a run's kernel environment or folder differs from the kernel pool's: it starts its own kernel")
            return None
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        dead: list[PooledKernel] = []
        kernel = None
        with self._state:
            while True:
                while self._ready and kernel is None:
                    candidate = self._ready.popleft()
                    if candidate.alive():
                        kernel = candidate
                    else:
                        dead.append(candidate)
                remaining = deadline - time.monotonic()
                if kernel is not None or self._closed or not self._starting or remaining <= 0:
                    break
                self._state.wait(remaining)
            if kernel is not None:
                self.handed_out += 1
        for corpse in dead:
            log.warning("kernel pool: a kernel died while it waited for a run; another is started")
            self._shut_down_later(corpse, now=True)
            corpse.log.close()
        if kernel is not None or dead:
            self._call(self._wanted.set)  # replacements, started now
        return kernel

    def retire(self, kernel: PooledKernel) -> None:
        """Shut down, in the background, a kernel that served its run."""
        self._shut_down_later(kernel, now=False)

    def close(self, timeout: float = 20.0) -> None:
        """Shut every kernel of the pool down and stop its thread.  Kernels still serving a run
        are shut down with the others; whatever still runs after ``timeout`` seconds is killed."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.notify_all()
        if self._thread.is_alive():
            closing = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
            try:
                closing.result(timeout)
            except FutureTimeoutError:
                log.warning("the kernel pool did not shut its kernels down within %.0f s: killing them", timeout)
        with self._state:
            left = list(self._live)
        for kernel in left:
            if kernel.group is not None:
                _kill_group(kernel.group)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    # ------------------------------------------------------------------ the pool's thread

    def _call(self, function: Any) -> None:
        """Run ``function`` in the pool's loop (nothing once the loop has stopped)."""
        try:
            self._loop.call_soon_threadsafe(function)
        except RuntimeError:
            pass  # the loop is closed: the pool has shut down

    def _shut_down_later(self, kernel: PooledKernel, *, now: bool) -> None:
        def spawn() -> None:
            task = self._loop.create_task(self._shut_down(kernel, now=now))
            self._shutdowns.add(task)
            task.add_done_callback(self._shutdowns.discard)

        if self._thread.is_alive() and not self._loop.is_closed():
            self._call(spawn)
        elif kernel.group is not None:
            _kill_group(kernel.group)  # the pool has shut down: nothing else will stop it

    async def _fill(self) -> None:
        self._fill_task = asyncio.current_task()
        while True:
            with self._state:
                if self._closed:
                    return
                wanted = len(self._ready) < self.size
                self._starting = wanted
                if not wanted:
                    self._wanted.clear()
            if not wanted:
                await self._wanted.wait()
                continue
            try:
                kernel = await self._start_one()
            except (RuntimeError, OSError, TimeoutError) as exc:
                # jupyter_client reports a kernel that died or did not answer as RuntimeError or
                # TimeoutError; warm-up failures are KernelWarmUpError (a RuntimeError).
                self._failures += 1
                pause = min(60.0, 2.0 ** (self._failures - 1))
                log.warning("kernel pool: a kernel did not start (%s: %s); runs start their own, "
                            "the pool tries again in %.0f s", type(exc).__name__, exc, pause)
                with self._state:
                    self._starting = False
                    self._state.notify_all()
                try:
                    await asyncio.wait_for(self._closing(), pause)
                except TimeoutError:
                    pass
                continue
            self._failures = 0
            with self._state:
                keep = not self._closed
                if keep:
                    self._ready.append(kernel)
                self._state.notify_all()
            if not keep:
                await self._shut_down(kernel, now=True)
                return

    async def _closing(self) -> None:
        """Return once the pool is closed (what ends a pause after a failed start early)."""
        while True:
            with self._state:
                if self._closed:
                    return
            self._wanted.clear()
            await self._wanted.wait()

    async def _start_one(self) -> PooledKernel:
        manager = SettingsKernelManager(kernel_name=KERNEL_NAME)
        kernel = PooledKernel(manager, tempfile.TemporaryFile())
        with self._state:
            self._live.add(kernel)
        try:
            # What papermill's client gives a kernel it starts: the folder, an in-memory history.
            await manager.start_kernel(env=dict(self.environment), cwd=self.cwd, stdout=kernel.log,
                                       stderr=kernel.log, extra_arguments=["--HistoryManager.hist_file=:memory:"])
            await self._import_ahead(kernel)
        except BaseException:
            await self._shut_down(kernel, now=True)
            kernel.log.close()
            raise
        return kernel

    async def _import_ahead(self, kernel: PooledKernel) -> None:
        client = kernel.manager.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=self.start_timeout)
            if not self.modules:
                return
            reply = await client.execute_interactive(
                ahead_code(self.modules), silent=True, store_history=False, allow_stdin=False,
                timeout=self.start_timeout, output_hook=lambda message: None)
        finally:
            client.stop_channels()
        content = reply.get("content", {})
        if content.get("status") != "ok":
            raise KernelWarmUpError(f"importing {', '.join(self.modules)} ahead failed: "
                                    f"{content.get('ename')}: {content.get('evalue')}")

    async def _shut_down(self, kernel: PooledKernel, *, now: bool) -> None:
        manager = kernel.manager
        try:
            if manager.has_kernel:
                # A kernel stopped meanwhile (stop_kernel) is only cleaned up.
                await manager.shutdown_kernel(now=now or not kernel.alive())
        except (RuntimeError, OSError, TimeoutError) as exc:
            log.warning("kernel pool: shutting a kernel down failed (%s: %s); killing it", type(exc).__name__, exc)
        finally:
            if kernel.alive() and kernel.group is not None:
                _kill_group(kernel.group)
            with self._state:
                self._live.discard(kernel)

    async def _close(self) -> None:
        # A start under way is cancelled, not waited for: its kernel, if launched, is killed.
        if self._fill_task is not None:
            self._fill_task.cancel()
            await asyncio.gather(self._fill_task, return_exceptions=True)
        with self._state:
            ready, self._ready = list(self._ready), deque()
        for kernel in ready:
            await self._shut_down(kernel, now=True)
            kernel.log.close()
        while self._shutdowns:
            await asyncio.gather(*self._shutdowns, return_exceptions=True)

    def _filler_ended(self, future: Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("kernel pool: it stopped starting kernels; runs start their own", exc_info=future.exception())
            with self._state:
                self._starting = False
                self._state.notify_all()


# --------------------------------------------------------------------------- saving


_html_lock = threading.Lock()

# The template's <script> tags for require.js and MathJax, left empty by the exporter below.
_EMPTY_SCRIPT = re.compile(r'<script src="">\s*</script>\n?')


@cache
def _html_exporter() -> Any:
    """One nbconvert HTML exporter for the process: building one loads templates (~0.3 s).

    Without require.js and MathJax, which the template loads from a CDN on every page: the
    pages must open on an installation without internet, and our notebooks need neither.
    """
    from nbconvert import HTMLExporter

    return HTMLExporter(require_js_url="", mathjax_url="")


def render_html(notebook: Any) -> bytes:
    """The executed notebook as a standalone HTML page that loads nothing from elsewhere."""
    with _html_lock:  # the exporter keeps per-call state; runs in threads take turns
        body, _ = _html_exporter().from_notebook_node(notebook)
    return _EMPTY_SCRIPT.sub("", body).encode("utf-8")


def save_run(bucket: Bucket, job: Job, notebook: Any, kernel_log: Any) -> None:
    """Write the executed notebook, its HTML and the kernel's log (if any) under ``runs/<job id>/``."""
    bucket.write_bytes(job.notebook_key, nbformat.writes(notebook).encode("utf-8"))
    bucket.write_bytes(job.html_key, render_html(notebook))
    if kernel_log is not None:
        kernel_log.seek(0)
        if text := kernel_log.read():
            bucket.write_bytes(job.kernel_log_key, text)
