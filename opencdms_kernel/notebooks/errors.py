"""Errors of the notebook registry: each names the notebook and, where there is one, the parameter."""

from __future__ import annotations

from opencdms_kernel.errors import NotFoundError, OpenCDMSError


class NotebookRequestError(OpenCDMSError, ValueError):
    """A request to run a notebook is refused before any kernel starts.

    ``notebook`` is the requested notebook, ``parameter`` the parameter at fault (``None`` when
    the request as a whole is wrong), ``reason`` says why.
    """

    def __init__(self, notebook: str, parameter: str | None, reason: str) -> None:
        self.notebook = notebook
        self.parameter = parameter
        self.reason = reason
        where = f"notebook '{notebook}'" + (f", parameter {parameter!r}" if parameter is not None else "")
        super().__init__(f"{where}: {reason}")


class UnknownNotebookError(NotebookRequestError):
    """No notebook of that name is registered."""

    def __init__(self, notebook: str, known: list[str]) -> None:
        listed = ", ".join(known) if known else "none"
        super().__init__(notebook, None, f"no such notebook (registered: {listed})")


class NotebookParameterError(NotebookRequestError):
    """A parameter of a request is unknown, badly named or of the wrong type or value."""

    parameter: str

    def __init__(self, notebook: str, parameter: str, reason: str) -> None:
        super().__init__(notebook, parameter, reason)


class NotebookDefinitionError(OpenCDMSError):
    """A notebook file cannot be registered (unreadable, or a parameter declared wrongly)."""

    def __init__(self, file: str, reason: str, parameter: str | None = None) -> None:
        self.file = file
        self.parameter = parameter
        self.reason = reason
        where = file + (f", parameter {parameter!r}" if parameter is not None else "")
        super().__init__(f"{where}: {reason}")


class JobNotFoundError(NotFoundError):
    """No job with that id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id}")
