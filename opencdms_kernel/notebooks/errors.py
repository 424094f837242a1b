"""Errors of the notebook registry: each names the notebook and, where there is one, the parameter."""

from __future__ import annotations

from opencdms_kernel.errors import NotFoundError, OpenCDMSError, ParameterError


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


class NotebookParameterError(NotebookRequestError, ParameterError):
    """A parameter of a request is unknown, badly named or of the wrong type or value.

    Also the kernel's :class:`ParameterError` (HTTP 400, exit code 2): its message is the
    kernel's ``parameter 'x': reason`` preceded by the notebook, ``notebook 'n', parameter
    'x': reason``.  The name is written as Python writes it (``repr``), which for a declared
    name is the same text; a name a request made up is shown with its control characters
    escaped, since it has not been checked yet.
    """

    parameter: str

    def __init__(self, notebook: str, parameter: str, reason: str) -> None:
        # Not NotebookRequestError.__init__: its message is written here, in the kernel's form.
        ParameterError.__init__(self, parameter, reason)
        self.notebook = notebook
        self.args = (f"notebook '{notebook}', parameter {parameter!r}: {reason}",)


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
