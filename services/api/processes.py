"""Every registered notebook as an OGC API process; jobs are the kernel's ``job`` rows.

:class:`NotebookProcessor` describes one notebook from the registry (title, description, each
parameter's JSON Schema as an input, the run record as the output).  It never runs anything:
:class:`JobManager`, pygeoapi's process manager of this service, records an ``accepted`` job
with :func:`~opencdms_kernel.notebooks.jobs.submit_job` and the ``opencdms worker`` processes run
it.  The ``job`` table is the one job store: listing, status, results and dismissal read and
change it through :mod:`opencdms_kernel.notebooks.jobs`.

- Asynchronous (``Prefer: respond-async``): 201, ``Location: …/jobs/<id>``.
- Synchronous: waits for the job up to ``api_sync_timeout`` seconds (LISTEN/NOTIFY, no
  polling) and answers its results; a job still unfinished then is answered as an asynchronous
  one (201 + ``Location``).
- ``Idempotency-Key`` header: the same key returns the job it named, never a second run
  (the same key with another process or other inputs: 409).
"""

from __future__ import annotations

import logging
from typing import Any

from pygeoapi.process.base import BaseProcessor, JobNotFoundError, JobResultNotFoundError, ProcessorExecuteError
from pygeoapi.process.manager.base import BaseManager
from pygeoapi.util import JobStatus as OgcStatus
from pygeoapi.util import RequestedProcessExecutionMode

from opencdms_kernel.errors import NotFoundError
from opencdms_kernel.notebooks import jobs
from opencdms_kernel.notebooks.errors import JobNotFoundError as KernelJobNotFoundError
from opencdms_kernel.notebooks.registry import NotebookInfo
from services.api.config import base_url
from services.api.context import current_caller, request_header
from services.api.errors import ApiParameterError, processor_error, processor_errors
from services.api.runtime import runtime

log = logging.getLogger(__name__)

TRIGGER = "api"
JOB_LIMIT_MAX = 1000


def process_description(info: NotebookInfo) -> dict[str, Any]:
    """The OGC process description of a notebook, generated from the registry."""
    inputs = {}
    for spec in info.parameters:
        inputs[spec.name] = {
            "title": spec.name,
            "description": spec.description or spec.name,
            "schema": spec.json_schema(),
            "minOccurs": 0,  # every parameter has a default in the notebook
            "maxOccurs": 1,
        }
    return {
        "version": "1.0.0",
        "id": info.name,
        "title": {"en": info.title},
        "description": {"en": info.description or info.title},
        "jobControlOptions": ["sync-execute", "async-execute"],
        "keywords": ["notebook", "opencdms"],
        "links": [],
        "inputs": inputs,
        "outputs": {
            "run": {
                "title": "Run record",
                "description": "The job: status, the executed notebook, its HTML and the outputs it recorded.",
                "schema": {"type": "object", "contentMediaType": "application/json"},
            }
        },
        "example": {"inputs": {spec.name: spec.default for spec in info.parameters if spec.has_default}},
    }


class NotebookProcessor(BaseProcessor):
    """One notebook (``processor.notebook`` in the generated configuration)."""

    def __init__(self, processor_def: dict[str, Any]) -> None:
        name = processor_def["notebook"]
        with processor_errors():
            info = runtime().registry.get(name)
        super().__init__(processor_def, process_description(info))

    def execute(self, data: dict[str, Any], outputs: dict[str, Any] | None = None) -> tuple[str, Any]:
        # The manager records a job for a worker instead; reaching this is a configuration error.
        raise ProcessorExecuteError(user_msg="notebooks run in `opencdms worker` processes, not in the API")


def _status(job: jobs.Job) -> str:
    return job.status.value


def run_links(job: jobs.Job) -> dict[str, Any]:
    """Where a job's files are: the executed notebook, its HTML, every recorded output."""
    files = f"{base_url(runtime().settings)}/jobs/{job.id}/files"
    links = [
        {"rel": "notebook", "type": "application/x-ipynb+json", "title": "Executed notebook",
         "href": f"{files}/{job.notebook_key}", "key": job.notebook_key},
        {"rel": "html", "type": "text/html", "title": "Executed notebook as HTML",
         "href": f"{files}/{job.html_key}", "key": job.html_key},
    ]
    for name, output in job.outputs.items():
        links.append({"rel": "output", "name": name, "type": output.media_type or "application/octet-stream",
                      "title": output.title or name, "href": f"{files}/{output.key}", "key": output.key})
    return {"job": str(job.id), "process": job.process, "status": job.status.value, "message": job.message,
            "error": job.error, "parameters": job.parameters, "links": links}


def job_keys(job: jobs.Job) -> set[str]:
    """The bucket keys a job's results link to (the only ones ``/jobs/<id>/files/…`` serves)."""
    return {job.notebook_key, job.html_key, *(output.key for output in job.outputs.values())}


def _job_dict(job: jobs.Job) -> dict[str, Any]:
    """A job in the shape pygeoapi's jobs pages read."""
    updated = job.finished_at or job.heartbeat_at or job.started_at or job.created_at
    progress = {"accepted": 0, "running": 50}.get(job.status.value, 100)
    return {
        "type": "process",
        "identifier": str(job.id),
        "process_id": job.process,
        "status": _status(job),
        "message": job.error or job.message or job.status.value,
        "progress": progress,
        "parameters": job.parameters,
        "created": job.created_at.isoformat(),
        "started": (job.started_at or job.created_at).isoformat(),
        "finished": job.finished_at.isoformat() if job.finished_at else None,
        "updated": updated.isoformat(),
        "mimetype": "application/json",
    }


class JobManager(BaseManager):
    """pygeoapi's process manager over the kernel's ``job`` table."""

    def __init__(self, manager_def: dict[str, Any]) -> None:
        super().__init__(manager_def)
        self.is_async = True  # without it pygeoapi silently runs respond-async requests synchronously

    def get_jobs(self, status: Any = None, limit: int | None = None, offset: int | None = None) -> dict[str, Any]:
        limit = min(limit or 100, JOB_LIMIT_MAX)
        with processor_errors():
            datastore = runtime().datastore
            wanted = status.value if status is not None else None
            found = jobs.list_jobs(datastore, status=wanted, limit=limit, offset=offset or 0)
            matched = jobs.count_jobs(datastore, status=wanted)
        return {"jobs": [_job_dict(job) for job in found], "numberMatched": matched}

    def get_job(self, job_id: str) -> dict[str, Any]:
        return _job_dict(self._job(job_id))

    def _job(self, job_id: str) -> jobs.Job:
        with processor_errors():
            try:
                return jobs.get_job(runtime().datastore, job_id)
            except KernelJobNotFoundError as exc:
                # pygeoapi answers its own JobNotFoundError with a 404.
                raise JobNotFoundError(str(exc)) from exc

    def get_job_result(self, job_id: str) -> tuple[str, Any]:
        job = self._job(job_id)
        if job.status is not jobs.JobStatus.SUCCESSFUL:
            raise JobResultNotFoundError(f"job {job_id} is {job.status.value}")
        return "application/json", run_links(job)

    def delete_job(self, job_id: str) -> bool:
        with processor_errors():
            try:
                jobs.dismiss_job(runtime().datastore, job_id)
            except KernelJobNotFoundError as exc:
                raise JobNotFoundError(str(exc)) from exc
        return True

    def add_job(self, job_metadata: dict[str, Any]) -> str:
        raise NotImplementedError("jobs are recorded by submit_job")

    def update_job(self, job_id: str, update_dict: dict[str, Any]) -> bool:
        raise NotImplementedError("jobs are updated by the workers")

    def execute_process(self, process_id: str, data_dict: dict[str, Any], execution_mode: Any = None,
                        requested_outputs: Any = None, subscriber: Any = None,
                        requested_response: Any = None) -> tuple[str, str, Any, OgcStatus, dict[str, str]]:
        current = runtime()
        if not isinstance(data_dict, dict):
            raise processor_error(ApiParameterError("inputs", "must be an object of parameter names and values"))
        with processor_errors():
            job = jobs.submit_job(
                current.datastore, current.registry, process_id, data_dict, trigger=TRIGGER,
                user=current_caller().name, idempotency_key=request_header("Idempotency-Key"),
            )
            if execution_mode != RequestedProcessExecutionMode.respond_async:
                job = jobs.wait_for_job(current.datastore, job.id, current.settings.api_sync_timeout)
        if not job.status.finished:
            return str(job.id), "application/json", None, OgcStatus.accepted, {
                "Preference-Applied": RequestedProcessExecutionMode.respond_async.value}
        applied = {"Preference-Applied": RequestedProcessExecutionMode.wait.value}
        if job.status is jobs.JobStatus.SUCCESSFUL:
            return str(job.id), "application/json", run_links(job), OgcStatus.successful, applied
        description = job.error or job.message or f"job {job.status.value}"
        failure = {"type": "NoApplicableCode", "code": "NoApplicableCode",
                   "description": f"job {job.id} {job.status.value}: {description}"}
        return str(job.id), "application/json", failure, OgcStatus.failed, applied


def read_job_file(job_id: str, key: str) -> tuple[bytes, str]:
    """A file a job's results link to (the executed notebook, its HTML, a recorded output).

    Only the keys the job's record names are served, so the route cannot read any other object
    of the bucket.
    """
    current = runtime()
    try:
        job = jobs.get_job(current.datastore, job_id)
    except KernelJobNotFoundError as exc:
        raise JobFileNotFoundError(str(exc)) from exc
    if key not in job_keys(job):
        raise JobFileNotFoundError(f"job {job.id} has no file {key[:200]!r}")
    media_types = {job.notebook_key: "application/x-ipynb+json", job.html_key: "text/html; charset=utf-8"}
    media_types.update({output.key: output.media_type or "application/octet-stream" for output in job.outputs.values()})
    try:
        body = current.bucket.read_bytes(key)
    except FileNotFoundError as exc:
        raise JobFileNotFoundError(f"job {job.id}: {key[:200]!r} is not in the bucket (yet)") from exc
    return body, media_types[key]


class JobFileNotFoundError(NotFoundError):
    """A job file that the job does not name, or that is not (yet) in the bucket."""
