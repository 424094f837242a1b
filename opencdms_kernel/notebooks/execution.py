"""Running one notebook in a fresh ``opencdms`` kernel through papermill, and saving the result.

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
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterator, Mapping

import nbformat
import papermill
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
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
) -> Execution:
    """Run a copy of ``source`` with ``parameters`` in a fresh ``opencdms`` kernel.

    ``environment`` is the kernel process's whole environment (see :func:`kernel_environment`);
    the kernel works in ``input_path``'s folder; ``output_url`` is recorded in the notebook's
    metadata as where it will be saved; ``timeout`` limits each cell (s).  A failing cell is
    not an exception: it is ``execution.error``.  A cell timeout, a kernel that died or did not
    start raise, with ``execution.notebook`` holding what ran.  ``kernel_log`` (a binary file)
    receives the kernel process's output.
    """
    _register_engine()
    try:
        papermill.execute_notebook(
            source, None, parameters=dict(parameters) or None, engine_name=ENGINE_NAME,
            request_save_on_cell_execute=False, kernel_name=KERNEL_NAME, language="python",
            progress_bar=False, log_output=False, start_timeout=KERNEL_START_TIMEOUT,
            # for the engine:
            execution=execution, source_path=str(input_path), output_url=output_url,
            kernel_env=dict(environment), kernel_cwd=str(input_path.parent), kernel_log=kernel_log,
            execution_timeout=timeout,
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
        provisioner = self.provisioner
        group = getattr(provisioner, "pgid", None) or getattr(provisioner, "pid", None)
        if job_id and group:
            with _kernels_lock:
                if job_id in _running:
                    _running[job_id] = group
                stopping = job_id in _stop_requested
            if stopping:  # stopped while it was starting
                _kill_group(group)


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
        start_timeout: float = KERNEL_START_TIMEOUT, execution_timeout: float | None = None, **_: Any,
    ) -> Any:
        from papermill.clientwrap import PapermillNotebookClient
        from papermill.log import logger as papermill_logger

        client = PapermillNotebookClient(
            nb_man, kernel_name=kernel_name, kernel_manager_class=SettingsKernelManager,
            timeout=execution_timeout, startup_timeout=start_timeout, log=papermill_logger,
            log_output=log_output, resources={"metadata": {"path": kernel_cwd}},
            on_cell_start=lambda **_: _count_cell(execution),
        )
        # start_kernel(env=…, stdout=…, stderr=…) of the client's own kernel manager (Popen
        # arguments), which the client shuts down at the end.
        return client.execute(env=kernel_env, stdout=kernel_log, stderr=kernel_log)


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
