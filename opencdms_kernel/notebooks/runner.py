"""Running a registered notebook as a recorded job (papermill), and reading jobs back.

One run (:func:`run_notebook` = :func:`submit_notebook` + :func:`execute_job`):

1. The request is validated against the notebook's declared parameters (registry).  Nothing
   is written and no kernel starts before this passes.
2. A ``job`` row is written (``accepted``), then claimed (``running``, ``started_at``); a job is
   claimed once only, so two workers never run the same job.
3. papermill injects the parameters (cell ``injected-parameters``) into a fresh copy of the
   notebook, which runs in the ``opencdms`` kernel.  The kernel receives the run's settings as
   ``OPENCDMS_*`` variables of its own process environment (never as injected parameters:
   database passwords and S3 keys must not end up in a saved notebook), so ``Settings()`` in
   the notebook sees this installation.  The environment is handed to the kernel manager's
   ``start_kernel(env=…)`` by a papermill engine of our own; the caller's ``os.environ`` is
   read, never changed, so concurrent runs in threads cannot see each other's settings.
4. The executed notebook (partial, with papermill's error marker, when a cell failed) and its
   HTML rendering (nbconvert) are saved under ``runs/<job id>/`` in the bucket; the outputs the
   notebook recorded with :func:`~opencdms_kernel.notebooks.record_output` go to ``job.outputs``;
   the job ends ``successful`` or ``failed`` with the cell's exception as ``error``.  The kernel
   process's own output (ipykernel's log; why a kernel did not start) is kept as
   ``runs/<job id>/kernel.log`` when there is any, instead of going to the caller's terminal.

In the kernel, ``OPENCDMS_DATABASE_URL`` is the URL of the server the runner itself is
connected to (for the embedded mode, the running private server), so a notebook never starts
or stops a second embedded PostgreSQL; ``OPENCDMS_USER`` is the person or service that
requested the run (the audit trail names them); ``OPENCDMS_JOB_ID`` is the job's id.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from functools import cache
from typing import Any, Mapping

import sqlalchemy as sa
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec

from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import job as job_table
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.notebooks.errors import JobNotFoundError, NotebookRequestError
from opencdms_kernel.notebooks.kernelspec import KERNEL_NAME, ensure_kernel_spec
from opencdms_kernel.notebooks.outputs import JOB_ID_VARIABLE, RecordedOutput, recorded_outputs
from opencdms_kernel.notebooks.registry import NotebookRegistry, default_notebook_folder, open_registry
from opencdms_kernel.settings import Settings

log = logging.getLogger(__name__)

RUNS_PREFIX = "runs/"
ENV_PREFIX = "OPENCDMS_"


class JobStatus(str, Enum):
    """The states of a job (those of OGC API - Processes)."""

    ACCEPTED = "accepted"
    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    DISMISSED = "dismissed"


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
        return {
            "id": str(self.id), "process": self.process, "parameters": self.parameters,
            "trigger": self.trigger, "requested_by": self.requested_by, "status": self.status.value,
            "message": self.message, "error": self.error,
            "outputs": {name: output.as_dict() for name, output in self.outputs.items()},
            "notebook_key": self.notebook_key, "html_key": self.html_key,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Job":
        outputs = {
            name: RecordedOutput(name, entry["key"], entry.get("media_type"), entry.get("title"))
            for name, entry in (row["outputs"] or {}).items()
        }
        return cls(
            id=row["id"], process=row["process"], parameters=dict(row["parameters"] or {}),
            trigger=row["trigger"], requested_by=row["requested_by"], status=JobStatus(row["status"]),
            message=row["message"], error=row["error"], outputs=outputs, created_at=row["created_at"],
            started_at=row["started_at"], finished_at=row["finished_at"],
        )


class JobStateError(OpenCDMSError):
    """A job cannot be executed in its current state (e.g. it already ran)."""


# --------------------------------------------------------------------------- public API


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
    """Validate, record and run the notebook ``name``; returns the finished job.

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
        job = submit_notebook(name, parameters, datastore=datastore, registry=registry, trigger=trigger,
                              user=user or settings.user)
        return execute_job(job, settings=settings, datastore=datastore, bucket=bucket, registry=registry,
                           timeout=timeout)
    finally:
        if owned:
            datastore.close()


def submit_notebook(
    name: str,
    parameters: Mapping[str, Any] | None,
    *,
    datastore: Datastore,
    registry: NotebookRegistry,
    trigger: str,
    user: str,
) -> Job:
    """Validate the request and record an ``accepted`` job (to be run by :func:`execute_job`)."""
    info, checked = registry.validate(name, parameters or {})
    with datastore.engine.begin() as connection:
        row = connection.execute(
            sa.insert(job_table)
            .values(process=info.name, parameters=checked, trigger=trigger, requested_by=user,
                    status=JobStatus.ACCEPTED.value)
            .returning(*job_table.c)
        ).mappings().one()
    return Job.from_row(row)


def execute_job(
    job: Job | uuid.UUID | str,
    *,
    settings: Settings,
    datastore: Datastore,
    bucket: Bucket | None = None,
    registry: NotebookRegistry | None = None,
    timeout: float | None = None,
) -> Job:
    """Run an ``accepted`` job's notebook and record the result; returns the finished job.

    A failing cell, a cell timeout or a kernel that dies end the job ``failed`` (returned, not
    raised); a job that is not ``accepted`` any more raises :class:`JobStateError`.
    """
    job_id = job.id if isinstance(job, Job) else _job_uuid(job)
    claimed = _claim(datastore, job_id)
    registry = registry or open_registry(default_notebook_folder(settings))
    bucket = bucket or open_bucket(settings)
    try:
        # The notebook may have changed since the job was accepted: check the request again.
        info, checked = registry.validate(claimed.process, claimed.parameters)
    except NotebookRequestError as exc:
        return _finish(datastore, job_id, JobStatus.FAILED, "refused", str(exc), {})
    notebook = None
    # The kernel process's own stdout/stderr (ipykernel's log, start-up failures) go to a file
    # kept with the run, not to the caller's terminal; cell output is in the notebook.
    with tempfile.TemporaryFile() as kernel_log:
        try:
            ensure_kernel_spec(settings.home)
            notebook = _prepare(info.notebook, checked, info.path, bucket.url(claimed.notebook_key))
            environment = kernel_environment(
                settings, database_url=datastore.url.render_as_string(hide_password=False),
                user=claimed.requested_by, job_id=str(job_id),
            )
            error = _execute(notebook, environment, str(info.path.parent), timeout, kernel_log)
            outputs = recorded_outputs(notebook)
            _save(bucket, claimed, notebook, kernel_log)
        except Exception as exc:
            # The kernel died or did not start, a cell timed out, the bucket refused a write:
            # the job ends failed with the cause (the traceback goes to the log).
            log.exception("job %s (%s) failed outside the notebook", job_id, claimed.process)
            return _fail_outside(datastore, bucket, claimed, notebook, kernel_log, f"{type(exc).__name__}: {exc}")
        except BaseException:
            # Interrupted (Ctrl-C, shutdown): record it, then let the interruption go on.
            _fail_outside(datastore, bucket, claimed, notebook, kernel_log, "interrupted")
            raise
    if error is not None:
        return _finish(datastore, job_id, JobStatus.FAILED, f"failed in cell {error.cell}", error.text, outputs)
    recorded = f"{len(outputs)} output{'' if len(outputs) == 1 else 's'} recorded"
    return _finish(datastore, job_id, JobStatus.SUCCESSFUL, recorded, None, outputs)


def get_job(datastore: Datastore, job_id: uuid.UUID | str) -> Job:
    """The job ``job_id``, or JobNotFoundError."""
    key = _job_uuid(job_id)
    with datastore.engine.connect() as connection:
        row = connection.execute(sa.select(job_table).where(job_table.c.id == key)).mappings().one_or_none()
    if row is None:
        raise JobNotFoundError(str(job_id))
    return Job.from_row(row)


def list_jobs(
    datastore: Datastore, *, process: str | None = None, status: JobStatus | None = None, limit: int = 100
) -> list[Job]:
    """The latest jobs first, optionally of one notebook and/or in one state."""
    query = sa.select(job_table).order_by(job_table.c.created_at.desc()).limit(limit)
    if process is not None:
        query = query.where(job_table.c.process == process)
    if status is not None:
        query = query.where(job_table.c.status == JobStatus(status).value)
    with datastore.engine.connect() as connection:
        return [Job.from_row(row) for row in connection.execute(query).mappings()]


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


# --------------------------------------------------------------------------- job rows


def _job_uuid(job_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        raise JobNotFoundError(str(job_id)) from None


def _claim(datastore: Datastore, job_id: uuid.UUID) -> Job:
    with datastore.engine.begin() as connection:
        row = connection.execute(
            sa.update(job_table)
            .where(job_table.c.id == job_id, job_table.c.status == JobStatus.ACCEPTED.value)
            .values(status=JobStatus.RUNNING.value, started_at=sa.func.clock_timestamp())
            .returning(*job_table.c)
        ).mappings().one_or_none()
    if row is None:
        current = get_job(datastore, job_id)  # raises JobNotFoundError for an unknown id
        raise JobStateError(f"job {job_id} is {current.status.value}, not accepted: it cannot run again")
    return Job.from_row(row)


def _finish(
    datastore: Datastore, job_id: uuid.UUID, status: JobStatus, message: str, error: str | None,
    outputs: Mapping[str, RecordedOutput],
) -> Job:
    with datastore.engine.begin() as connection:
        row = connection.execute(
            sa.update(job_table)
            .where(job_table.c.id == job_id)
            .values(status=status.value, message=message, error=error,
                    outputs={name: output.as_dict() for name, output in outputs.items()},
                    finished_at=sa.func.clock_timestamp())
            .returning(*job_table.c)
        ).mappings().one()
    return Job.from_row(row)


def _fail_outside(
    datastore: Datastore, bucket: Bucket, job: Job, notebook: Any, kernel_log: Any, error: str
) -> Job:
    """Record a failure that did not come from a cell, keeping what ran."""
    if notebook is not None:
        _save_quietly(bucket, job, notebook, kernel_log)
    outputs = recorded_outputs(notebook) if notebook is not None else {}
    return _finish(datastore, job.id, JobStatus.FAILED, "failed outside the notebook", error, outputs)


# --------------------------------------------------------------------------- papermill


def _prepare(source: Any, parameters: Mapping[str, Any], input_path: Any, output_url: str) -> Any:
    """A fresh copy of the notebook with the parameters injected, as papermill's CLI makes it."""
    from papermill.execute import remove_error_markers
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    notebook = load_notebook_node(source)  # a copy (through JSON) with papermill's metadata
    if parameters:
        notebook = parameterize_notebook(notebook, dict(parameters), kernel_name=KERNEL_NAME, language="python")
    notebook = remove_error_markers(notebook)
    notebook.metadata.papermill["input_path"] = str(input_path)
    notebook.metadata.papermill["output_path"] = output_url
    notebook.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "OpenCDMS (Python 3)", "language": "python"}
    return notebook


@dataclass(frozen=True)
class _CellError:
    cell: int  # execution count shown in the notebook (In [n]), else the cell's position
    text: str


def _execute(
    notebook: Any, environment: dict[str, str], cwd: str, timeout: float | None, kernel_log: Any
) -> _CellError | None:
    """Execute in place (``notebook`` holds the partial result if this raises); the cell error."""
    _engine().execute_notebook(
        notebook, KERNEL_NAME, output_path=None, progress_bar=False, log_output=False,
        autosave_cell_every=0, kernel_env=environment, kernel_log=kernel_log, cwd=cwd,
        execution_timeout=timeout,
    )
    return _mark_error(notebook)


def _mark_error(notebook: Any) -> _CellError | None:
    """The first failed cell, marked as papermill marks it (banner at the top, anchor above)."""
    import nbformat
    from papermill.execute import ERROR_ANCHOR_MSG, ERROR_MARKER_TAG, ERROR_MESSAGE_TEMPLATE

    for index, cell in enumerate(notebook.cells):
        failure = None
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                if output.ename == "SystemExit" and output.evalue in ("", "0"):
                    continue  # sys.exit(0) ends a notebook early on purpose (papermill agrees)
                failure = f"{output.ename}: {output.evalue}"
                break
        if failure is None and cell.get("metadata", {}).get("papermill", {}).get("exception") is True:
            failure = "CellExecutionError: the cell failed without an error output"
        if failure is None:
            continue
        count = cell.get("execution_count") or index
        banner = nbformat.v4.new_markdown_cell(ERROR_MESSAGE_TEMPLATE % str(count))
        anchor = nbformat.v4.new_markdown_cell(ERROR_ANCHOR_MSG)
        banner.metadata["tags"] = anchor.metadata["tags"] = [ERROR_MARKER_TAG]
        notebook.cells.insert(index, anchor)
        notebook.cells.insert(0, banner)
        return _CellError(count, failure)
    return None


@cache
def _engine() -> type:
    """The papermill engine that starts the kernel with the run's environment (made once)."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine
    from papermill.log import logger as papermill_logger

    class OpenCDMSEngine(NBClientEngine):
        """nbclient execution whose kernel process gets ``kernel_env`` as its environment."""

        @classmethod
        def execute_managed_notebook(  # type: ignore[override]
            cls, nb_man: Any, kernel_name: str, log_output: bool = False, *, kernel_env: dict[str, str],
            kernel_log: Any, cwd: str, start_timeout: float = 60, execution_timeout: float | None = None,
            **_: Any,
        ) -> Any:
            client = PapermillNotebookClient(
                nb_man, kernel_name=kernel_name, kernel_manager_class=SettingsKernelManager,
                timeout=execution_timeout, startup_timeout=start_timeout, log=papermill_logger,
                log_output=log_output, resources={"metadata": {"path": cwd}},
            )
            # start_kernel(env=…, stdout=…, stderr=…, cwd=…) of the client's own kernel manager
            # (Popen arguments), which the client shuts down at the end.
            return client.execute(env=kernel_env, stdout=kernel_log, stderr=kernel_log)

    return OpenCDMSEngine


class SettingsKernelManager(AsyncKernelManager):
    """A kernel manager whose ``start_kernel(env=…)`` environment wins over the spec's ``env``.

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


@cache
def _curve_available() -> bool:
    import zmq

    return bool(zmq.has("curve"))


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


def _save(bucket: Bucket, job: Job, notebook: Any, kernel_log: Any) -> None:
    import nbformat

    bucket.write_bytes(job.notebook_key, nbformat.writes(notebook).encode("utf-8"))
    bucket.write_bytes(job.html_key, render_html(notebook))
    kernel_log.seek(0)
    if text := kernel_log.read():
        bucket.write_bytes(job.kernel_log_key, text)


def _save_quietly(bucket: Bucket, job: Job, notebook: Any, kernel_log: Any) -> None:
    """Save what ran of a notebook while another failure is being reported."""
    try:
        _save(bucket, job, notebook, kernel_log)
    except Exception:  # the original failure is what the job reports; this one is logged
        log.exception("job %s: the partial notebook could not be saved", job.id)
