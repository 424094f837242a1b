"""Notebook registry: notebooks in ``notebooks/`` as parameterised, validated, recorded processes.

Inside a notebook (light imports, nothing of the runner):
``from opencdms_kernel.notebooks import BucketKey, ElementCode, WigosId, YearMonth, record_output``
— the parameter declaration convention is in :mod:`opencdms_kernel.notebooks.parameters`.

Around notebooks (loaded on first use): :func:`open_registry` / :class:`NotebookRegistry`
(discovery, schemas, validation); the job record, :mod:`.jobs` (:func:`submit_job`,
:func:`get_job`, :func:`list_jobs`, :func:`dismiss_job`, :func:`wait_for_job`); running a
notebook in a kernel, :mod:`.execution`; a recorded run, :mod:`.runner` (:func:`run_notebook`,
:func:`execute_job`); the workers that run submitted jobs, :mod:`.worker` (:func:`run_worker`);
and :func:`install_kernel_spec` / :func:`ensure_kernel_spec` (the ``opencdms`` Jupyter kernel).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from opencdms_kernel.notebooks.errors import (
    JobNotFoundError,
    NotebookDefinitionError,
    NotebookParameterError,
    NotebookRequestError,
    UnknownNotebookError,
)
from opencdms_kernel.notebooks.outputs import (
    OUTPUT_MEDIA_TYPE,
    RecordedOutput,
    current_job_id,
    record_output,
    recorded_outputs,
)
from opencdms_kernel.notebooks.parameters import (
    BucketKey,
    ElementCode,
    Kind,
    ParameterSpec,
    Period,
    WigosId,
    YearMonth,
)

# Loaded when first asked for: a notebook kernel importing the kinds above should not pay for
# SQLAlchemy, nbconvert and jupyter_client.
_LAZY = {
    "NotebookInfo": "registry", "NotebookRegistry": "registry", "open_registry": "registry",
    "default_notebook_folder": "registry",
    "Job": "jobs", "JobStatus": "jobs", "JobStateError": "jobs", "IdempotencyKeyConflictError": "jobs",
    "submit_job": "jobs", "get_job": "jobs", "list_jobs": "jobs", "count_jobs": "jobs", "dismiss_job": "jobs",
    "wait_for_job": "jobs",
    "kernel_environment": "execution", "render_html": "execution",
    "run_notebook": "runner", "execute_job": "runner",
    "run_worker": "worker", "Worker": "worker",
    "KERNEL_NAME": "kernelspec", "install_kernel_spec": "kernelspec", "ensure_kernel_spec": "kernelspec",
    "kernel_spec_dir": "kernelspec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


__all__ = [
    "OUTPUT_MEDIA_TYPE", "RecordedOutput", "record_output", "recorded_outputs", "current_job_id",
    "BucketKey", "ElementCode", "WigosId", "YearMonth", "Period", "Kind", "ParameterSpec",
    "NotebookRequestError", "NotebookParameterError", "UnknownNotebookError", "NotebookDefinitionError",
    "JobNotFoundError", *_LAZY,
]
