"""Named outputs a notebook records, carried in the executed notebook itself.

A notebook calls :func:`record_output` for each thing it produced (a report, a product, a
message).  The call displays one output of the media type :data:`OUTPUT_MEDIA_TYPE` (with a
plain-text line for people reading the notebook); after the run the registry reads them back
from the executed notebook with :func:`recorded_outputs`.  No side channel between the kernel
and the runner is needed, and a notebook run by hand in JupyterLab shows what it produced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping

from opencdms_kernel.bucket import bucket_key_problem

OUTPUT_MEDIA_TYPE = "application/vnd.opencdms.output+json"


@dataclass(frozen=True)
class RecordedOutput:
    """One named output of a run: a bucket key (relative to the bucket root) and what it is."""

    name: str
    key: str
    media_type: str | None = None
    title: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def record_output(name: str, key: str, *, media_type: str | None = None, title: str | None = None) -> RecordedOutput:
    """Record that this run produced ``key`` (a bucket key, e.g. ``reports/…/2020-01.html``) as ``name``.

    Call it from a notebook cell; the registry returns the outputs with the job.
    """
    if not name.isidentifier():
        raise ValueError(f"an output name must be an identifier, not {name!r}")
    if problem := bucket_key_problem(key):
        raise ValueError(f"output {name!r}: {problem}")
    output = RecordedOutput(name, key, media_type, title)
    from IPython.display import display  # the kernel's, imported only when called from one

    display({OUTPUT_MEDIA_TYPE: output.as_dict(), "text/plain": f"output {name}: {key}"}, raw=True)
    return output


def recorded_outputs(notebook: Mapping[str, Any]) -> dict[str, RecordedOutput]:
    """The outputs recorded in an executed notebook (nbformat dict), by name; the last one wins."""
    found: dict[str, RecordedOutput] = {}
    for data in _display_data(notebook):
        entry = data.get(OUTPUT_MEDIA_TYPE)
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and isinstance(entry.get("key"), str):
            found[entry["name"]] = RecordedOutput(
                entry["name"], entry["key"], entry.get("media_type"), entry.get("title")
            )
    return found


def _display_data(notebook: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []) or []:
            if output.get("output_type") in ("display_data", "execute_result"):
                yield output.get("data", {})


JOB_ID_VARIABLE = "OPENCDMS_JOB_ID"


def current_job_id() -> str | None:
    """The id of the job this notebook runs as (set by the registry's runner), or ``None`` when
    the notebook runs by hand; e.g. to write outputs under ``runs/<job id>/``."""
    import os

    return os.environ.get(JOB_ID_VARIABLE)
