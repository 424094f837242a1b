"""The notebook registry: discovery, typed parameters, refusals before any kernel, recorded runs, CLI.

Fixture notebooks are in ``tests/notebooks_fixtures``: ``hello`` (every kind of parameter;
writes to the bucket and the datastore through ``Settings()`` and records an output),
``fails`` (writes in a transaction, then raises inside it), ``plain`` (no parameters), ``sleeps``
(to be stopped by a timeout), and two
that must be left out (``broken_types``: an unknown type; ``not_json``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import job as job_table
from opencdms_kernel.db.schema import source
from opencdms_kernel.errors import ParameterError
from opencdms_kernel.notebooks import (
    JobStateError,
    JobStatus,
    Kind,
    NotebookDefinitionError,
    NotebookParameterError,
    NotebookRegistry,
    UnknownNotebookError,
    ensure_kernel_spec,
    execute_job,
    get_job,
    install_kernel_spec,
    kernel_environment,
    list_jobs,
    run_notebook,
    submit_job,
)
from opencdms_kernel.notebooks import runner
from opencdms_kernel.notebooks.kernelspec import KERNEL_NAME, kernel_spec_dir
from opencdms_kernel.settings import Settings
from opencdms_kernel.vocabulary import PERIOD_PATTERN, WIGOS_ID_PATTERN

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "notebooks_fixtures"


@pytest.fixture(scope="module", autouse=True)
def kernel_spec() -> None:
    """The environment's 'opencdms' kernel, installed for the project if it is missing."""
    ensure_kernel_spec(ROOT)


@pytest.fixture
def registry() -> NotebookRegistry:
    return NotebookRegistry(FIXTURES)


def one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- discovery


def test_discovery_gives_names_titles_descriptions_and_a_typed_schema(registry: NotebookRegistry) -> None:
    assert [info.name for info in registry.notebooks()] == ["fails", "hello", "plain", "sleeps"]
    hello = registry.get("hello")
    assert hello.title == "Hello station"
    assert hello.description == (
        "Writes a greeting for a station and month to the bucket and records it as a source in the datastore."
    )
    assert hello.kernel_name == KERNEL_NAME
    schema = hello.parameter_schema()
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    properties = schema["properties"]
    assert list(properties) == ["object_key", "station", "element", "month", "count", "scale", "loud", "note",
                                "stations", "until", "untyped"]
    assert properties["object_key"]["x-opencdms-kind"] == "BucketKey"
    assert properties["object_key"]["x-opencdms-prefixes"] == ["incoming/", "uploads/"]
    assert properties["object_key"]["description"] == "the input file"
    assert properties["object_key"]["default"] == "incoming/hello.csv"
    assert properties["station"]["pattern"] == WIGOS_ID_PATTERN
    assert properties["count"] == {"type": "integer", "x-opencdms-kind": "int",
                                   "description": "how many greetings", "default": 2}
    assert properties["scale"]["type"] == "number"
    assert properties["loud"]["type"] == "boolean"
    assert properties["note"]["type"] == "string"
    assert properties["stations"]["type"] == "array"
    assert properties["stations"]["items"]["pattern"].startswith("^[0-9]")
    assert properties["until"]["type"] == ["string", "null"] and properties["until"]["default"] is None
    assert properties["untyped"]["type"] == "integer"  # inferred from the default
    json.dumps(schema)  # JSON-ready as it is
    assert registry.get("plain").parameter_schema()["properties"] == {}


def test_broken_notebooks_are_left_out_with_the_reason_and_hide_nothing(registry: NotebookRegistry) -> None:
    problems = registry.problems()
    assert set(problems) == {"broken_types", "not_json"}
    assert isinstance(problems["broken_types"], NotebookDefinitionError)
    assert problems["broken_types"].parameter == "when"
    assert "broken_types.ipynb" in str(problems["broken_types"]) and "Timestamp" in str(problems["broken_types"])
    assert "not_json.ipynb" in str(problems["not_json"])
    with pytest.raises(UnknownNotebookError):
        registry.get("broken_types")


def test_the_registry_sees_a_changed_or_new_notebook(tmp_path: Path) -> None:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "plain.ipynb").write_bytes((FIXTURES / "plain.ipynb").read_bytes())
    registry = NotebookRegistry(folder)
    assert [info.name for info in registry.notebooks()] == ["plain"]
    (folder / "hello.ipynb").write_bytes((FIXTURES / "hello.ipynb").read_bytes())
    (folder / "_draft.ipynb").write_bytes((FIXTURES / "hello.ipynb").read_bytes())  # drafts are ignored
    assert [info.name for info in registry.notebooks()] == ["hello", "plain"]
    (folder / "plain.ipynb").unlink()
    assert [info.name for info in registry.notebooks()] == ["hello"]


def test_every_project_notebook_is_discovered_and_its_schema_parses() -> None:
    folder = ROOT / "notebooks"
    files = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith((".", "_"))) if folder.is_dir() else []
    if not files:
        pytest.skip("no notebooks in notebooks/ yet")
    registry = NotebookRegistry(folder)
    assert {name: str(problem) for name, problem in registry.problems().items()} == {}
    assert [info.name for info in registry.notebooks()] == [p.stem for p in files]
    for info in registry.notebooks():
        assert info.kernel_name == KERNEL_NAME, f"{info.name} declares kernel {info.kernel_name!r}"
        assert info.title and info.title != info.name, f"{info.name} has no markdown title"
        json.dumps(info.parameter_schema())
        info.validate({spec.name: spec.default for spec in info.parameters if spec.has_default})


# --------------------------------------------------------------------------- validation

BAD_REQUESTS = [
    ({"colour": "red"}, "colour", "unknown parameter"),
    ({"count": "three"}, "count", "must be an integer"),
    ({"count": True}, "count", "must be an integer"),
    ({"scale": float("nan")}, "scale", "finite number"),
    ({"loud": "yes"}, "loud", "true or false"),
    ({"note": 5}, "note", "must be a text"),
    ({"x=1;import os;#": 1}, "x=1;import os;#", "must be a Python identifier"),
    ({"count\n__import__('os')": 1}, "count\n__import__('os')", "must be a Python identifier"),
    ({"object_key": "../secrets.csv"}, "object_key", "'..' segments"),
    ({"object_key": "incoming/../../etc/passwd"}, "object_key", "'..' segments"),
    ({"object_key": "/etc/passwd"}, "object_key", "absolute path or URL"),
    ({"object_key": "s3://other-bucket/incoming/x.csv"}, "object_key", "absolute path or URL"),
    ({"object_key": "incoming//x.csv"}, "object_key", "empty path segment"),
    ({"object_key": "archive/observations/x.parquet"}, "object_key", "not under an allowed prefix"),
    ({"object_key": "incomingx/file.csv"}, "object_key", "not under an allowed prefix"),
    ({"station": "60001"}, "station", "is not a WIGOS identifier"),
    ({"element": "T MAX"}, "element", "not an element code"),
    ({"month": "2020-13"}, "month", "month 13 is not 01-12"),
    ({"month": "July"}, "month", "is not a month like 2020-07"),
    ({"element": "XYZ"}, "element", "'XYZ' is not an element code (known: TMAX"),
    ({"station": "15-20000-0-60001"}, "station", "the identifier series 15 is beyond 14"),
    ({"count": 2.5}, "count", "must be an integer, not float 2.5"),
    ({"stations": ["0-20000-0-60001", None]}, "stations", "not NoneType None (item 1)"),
    ({"stations": "0-20000-0-60001"}, "stations", "must be a list"),
    ({"stations": ["0-20000-0-60001", "bad"]}, "stations", "(item 1)"),
    ({"station": None}, "station", "not null"),
    ({"object_key": "incoming/"}, "object_key", "is a folder, not an object"),
    ({"object_key": "uploads/aws/"}, "object_key", "is a folder, not an object"),
    ({"note": "x" * 1001}, "note", "1,001 characters long, more than the 1,000 allowed"),
    ({"note": "bell\x07"}, "note", "control character '\\x07'"),
    ({"note": "clear\x1b[2J"}, "note", "control character '\\x1b'"),
    ({"note": "nul\x00"}, "note", "control character '\\x00'"),
    ({"note": "c1\x9b"}, "note", "control character '\\x9b'"),
    ({"note": "lone\rreturn"}, "note", "control character '\\r'"),
    ({"note": "half\ud800"}, "note", "not valid Unicode"),
]


@pytest.mark.parametrize(("parameters", "parameter", "reason"), BAD_REQUESTS)
def test_a_bad_request_is_refused_naming_the_notebook_and_parameter(
    registry: NotebookRegistry, parameters: dict[str, Any], parameter: str, reason: str
) -> None:
    with pytest.raises(NotebookParameterError) as raised:
        registry.validate("hello", parameters)
    assert raised.value.notebook == "hello"
    assert raised.value.parameter == parameter
    assert reason in str(raised.value)
    assert str(raised.value).startswith(f"notebook 'hello', parameter {parameter!r}: ")
    # The kernel's refused parameter (400 at the API, exit code 2 at the command line).
    assert isinstance(raised.value, ParameterError) and (raised.value.http_status, raised.value.exit_code) == (400, 2)
    assert str(raised.value).endswith(f": {raised.value.reason}")


def test_an_unregistered_notebook_is_refused(registry: NotebookRegistry) -> None:
    for name in ("nope", "../hello", "broken_types", "hello.ipynb"):
        with pytest.raises(UnknownNotebookError) as raised:
            registry.validate(name, {})
        assert raised.value.notebook == name and raised.value.parameter is None
        assert f"notebook '{name}'" in str(raised.value) and "registered: fails, hello, plain, sleeps" in str(raised.value)
    with pytest.raises(NotebookParameterError, match="declared: none"):
        registry.validate("plain", {"x": 1})


def test_a_good_request_is_normalised(registry: NotebookRegistry) -> None:
    _, checked = registry.validate("hello", {
        "object_key": "uploads/2020/x.csv", "element": " tmin", "scale": 2, "count": 3.0, "until": None,
        "stations": ("0-20000-0-60001",), "untyped": 4,
    })
    assert checked == {"object_key": "uploads/2020/x.csv", "element": "TMIN", "scale": 2.0, "count": 3,
                       "until": None, "stations": ["0-20000-0-60001"], "untyped": 4}
    assert isinstance(checked["scale"], float) and isinstance(checked["count"], int)


def test_parameters_typed_as_text_are_converted(registry: NotebookRegistry) -> None:
    hello = registry.get("hello")
    values = hello.parameters_from_text([
        ("count", "4"), ("scale", "0.5"), ("loud", "yes"), ("until", "null"), ("note", "null"),
        ("stations", "0-20000-0-60001,0-20000-0-60002"), ("stations", "0-20000-0-60003"), ("element", "prcp"),
    ])
    assert values == {"count": 4, "scale": 0.5, "loud": True, "until": None, "note": "null",
                      "stations": ["0-20000-0-60001", "0-20000-0-60002", "0-20000-0-60003"], "element": "PRCP"}
    assert hello.parameters_from_text([("stations", '["0-1-2-3"]')]) == {"stations": ["0-1-2-3"]}
    with pytest.raises(NotebookParameterError, match="'count': 'x' is not an integer"):
        hello.parameters_from_text([("count", "x")])
    with pytest.raises(NotebookParameterError, match="Python identifier"):
        hello.parameters_from_text([("x=1;import os;#", "1")])


# --------------------------------------------------------------------------- text parameters


def write_notebook(folder: Path, name: str, parameters: str, body: str = "print('done')") -> Path:
    """A notebook ``folder/<name>.ipynb`` with this parameters cell, run by the 'opencdms' kernel."""
    folder.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"display_name": "OpenCDMS (Python 3)", "language": "python", "name": KERNEL_NAME},
        "language_info": {"name": "python"},
    })
    parameters_cell = nbformat.v4.new_code_cell(parameters)
    parameters_cell.metadata["tags"] = ["parameters"]
    notebook.cells = [
        nbformat.v4.new_markdown_cell(f"# {name.title()}\n\nA notebook made by a test."),
        nbformat.v4.new_code_cell("from typing import Optional\nfrom opencdms_kernel.notebooks import BucketKey, record_output"),
        parameters_cell,
        nbformat.v4.new_code_cell(body),
    ]
    path = folder / f"{name}.ipynb"
    nbformat.write(notebook, path)
    return path


TEXT_PARAMETERS = """\
code: str = "ABC"  # station code [pattern: ^[A-Z]{3,5}$]
title: str = "Report"  # report title [max_length: 20]
both: Optional[str] = "AB-1"  # a label [pattern: ^[A-Z]{2}-[0-9]$] [max_length: 4]
note: str = ""  # free text, many lines [see the manual]
labels: list[str] = []  # labels [max_length: 8]
"""


@pytest.fixture
def text_registry(tmp_path: Path) -> NotebookRegistry:
    write_notebook(tmp_path / "notebooks", "texts", TEXT_PARAMETERS)
    return NotebookRegistry(tmp_path / "notebooks")


def test_text_parameters_have_a_length_limit_and_may_declare_a_pattern(text_registry: NotebookRegistry) -> None:
    assert text_registry.problems() == {}
    properties = text_registry.get("texts").parameter_schema()["properties"]
    assert properties["code"] == {"type": "string", "maxLength": 1000, "pattern": "^(?:^[A-Z]{3,5}$)$",
                                  "x-opencdms-kind": "str", "description": "station code", "default": "ABC"}
    assert properties["title"]["maxLength"] == 20 and "pattern" not in properties["title"]
    assert properties["title"]["description"] == "report title"
    assert properties["both"]["type"] == ["string", "null"]
    assert (properties["both"]["maxLength"], properties["both"]["pattern"]) == (4, "^(?:^[A-Z]{2}-[0-9]$)$")
    assert properties["note"]["maxLength"] == 1000  # the default limit
    assert properties["note"]["description"] == "free text, many lines [see the manual]"  # not a tag: kept
    assert properties["labels"]["items"] == {"type": "string", "maxLength": 8}

    texts = text_registry.get("texts")
    assert texts.validate({"code": "WXYZ", "title": "t" * 20, "both": None, "labels": ["a" * 8]}) == \
        {"code": "WXYZ", "title": "t" * 20, "both": None, "labels": ["a" * 8]}
    # Tab and newline are text; a Windows line end becomes a newline.
    assert texts.validate({"note": "line 1\r\n\tline 2\n"}) == {"note": "line 1\n\tline 2\n"}
    for parameters, parameter, words in [
        ({"code": "abc"}, "code", "'abc' does not match the pattern ^[A-Z]{3,5}$"),
        ({"code": "ABC\n"}, "code", "does not match the pattern"),  # '$' must not let a newline through
        ({"code": "ABCDEF"}, "code", "does not match the pattern"),
        ({"title": "t" * 21}, "title", "21 characters long, more than the 20 allowed"),
        ({"both": "AB-12"}, "both", "5 characters long, more than the 4 allowed"),
        ({"both": "ab-1"}, "both", "does not match the pattern"),
        ({"labels": ["ok", "a" * 9]}, "labels", "more than the 8 allowed (item 1)"),
        ({"note": "x" * 1001}, "note", "more than the 1,000 allowed"),
    ]:
        with pytest.raises(NotebookParameterError) as raised:
            texts.validate(parameters)
        assert (raised.value.notebook, raised.value.parameter) == ("texts", parameter)
        assert words in str(raised.value), str(raised.value)
    with pytest.raises(NotebookParameterError, match="parameter 'title': 21 characters long"):
        texts.parameters_from_text([("title", "t" * 21)])


@pytest.mark.parametrize(("declaration", "parameter", "words"), [
    ('size: int = 3  # a size [max_length: 3]', "size", "[max_length: …] belongs to a str parameter"),
    ('key: BucketKey = "incoming/a.csv"  # a key [pattern: ^incoming/]', "key", "[pattern: …] belongs to a str parameter"),
    ('name: str = "a"  # a name [max_length: 0]', "name", "max_length must be a whole number from 1"),
    ('name: str = "a"  # a name [max_length: many]', "name", "max_length must be a whole number from 1"),
    ('name: str = "a"  # a name [pattern: ^[a-z$]', "name", "the pattern is not a regular expression"),
    ('name: str = "a"  # a name [pattern: ^(a$]', "name", "the pattern is not a regular expression"),
    ('name: str = "a"  # a name [maxlength: 5]', "name", "unknown tag [maxlength: …]"),
    ('name: str = "a"  # a name [max_length: 2] [max_length: 3]', "name", "[max_length: …] is given twice"),
    ('name: str = "abc"  # a name [max_length: 2]', "name", "the default is invalid: 3 characters long"),
    ('name: str = "abc"  # a name [pattern: ^[0-9]+$]', "name", "the default is invalid: 'abc' does not match"),
    ('name: str = "a\\x1bb"  # a name', "name", "the default is invalid: contains a control character"),
    ('key: BucketKey = "incoming/"  # a folder [prefixes: incoming/]', "key", "is a folder, not an object"),
    ('key: BucketKey = "incoming/a.csv"  # a key [prefixes: incoming]', "key", "a folder key must end with '/'"),
])
def test_a_text_parameter_declared_wrongly_leaves_the_notebook_out(
    tmp_path: Path, declaration: str, parameter: str, words: str
) -> None:
    write_notebook(tmp_path, "wrong", declaration)
    problems = NotebookRegistry(tmp_path).problems()
    assert set(problems) == {"wrong"}
    assert problems["wrong"].parameter == parameter
    assert words in str(problems["wrong"]), str(problems["wrong"])


@pytest.mark.postgres
def test_text_limits_decide_what_reaches_the_job_table(datastore: Datastore, text_registry: NotebookRegistry) -> None:
    for refused in ({"code": "abc"}, {"title": "t" * 21}, {"note": "bell\x07"}, {"note": "x" * 1001}):
        with pytest.raises(NotebookParameterError):
            submit_job(datastore, text_registry, "texts", refused, trigger="test", user="t")
    assert job_count(datastore) == 0
    job = submit_job(datastore, text_registry, "texts", {"code": "WXYZ", "note": "a\r\n\tb"}, trigger="test",
                     user="t")
    with datastore.engine.connect() as connection:
        stored = connection.execute(sa.select(job_table.c.parameters).where(job_table.c.id == job.id)).scalar_one()
    assert stored == {"code": "WXYZ", "note": "a\n\tb"} and job_count(datastore) == 1


@pytest.mark.postgres
def test_a_folder_recorded_as_an_output_fails_the_run_and_records_no_output(
    settings: Settings, datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    write_notebook(tmp_path / "notebooks", "folder_output", 'report: str = "reports/"  # where',
                   "record_output('report', report)")
    registry = NotebookRegistry(tmp_path / "notebooks")
    job = run_notebook("folder_output", {}, settings=settings, datastore=datastore, bucket=bucket, registry=registry)
    assert job.status is JobStatus.FAILED and job.outputs == {}
    assert job.error and "output 'report'" in job.error and "is a folder, not an object" in job.error
    assert get_job(datastore, job.id).outputs == {}


# --------------------------------------------------------------------------- kernel spec


def test_the_kernel_spec_runs_this_python_with_the_project_home(tmp_path: Path) -> None:
    folder = install_kernel_spec(tmp_path / "project", prefix=tmp_path / "env")
    assert folder == tmp_path / "env" / "share" / "jupyter" / "kernels" / "opencdms"
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"] == [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec["display_name"] == "OpenCDMS (Python 3)" and spec["language"] == "python"
    assert spec["env"] == {"OPENCDMS_HOME": str((tmp_path / "project").resolve())}
    assert (folder / "logo-64x64.png").exists()
    written = (folder / "kernel.json").stat().st_mtime_ns
    assert install_kernel_spec(tmp_path / "project", prefix=tmp_path / "env") == folder  # idempotent
    assert (folder / "kernel.json").stat().st_mtime_ns == written
    install_kernel_spec(tmp_path / "elsewhere", prefix=tmp_path / "env")
    assert json.loads((folder / "kernel.json").read_text())["env"]["OPENCDMS_HOME"].endswith("elsewhere")
    # The environment's own spec (what runs use) exists and runs this interpreter.
    ours = json.loads((kernel_spec_dir() / "kernel.json").read_text())
    assert ours["argv"][0] == sys.executable


def test_the_kernel_environment_carries_the_settings_and_nothing_stray() -> None:
    settings = Settings(home=Path("/srv/cdms"), database_url="postgresql://u:p%40ss@db/cdms",
                        bucket_url="s3://cdms", s3_secret_access_key="s3cret", s3_endpoint_url="http://s3:9000")
    base = {"PATH": "/usr/bin", "OPENCDMS_S3_REGION": "stray", "OPENCDMS_HOME": "/wrong"}
    environment = kernel_environment(settings, user="alice", job_id="j1", base=base)
    assert environment["PATH"] == "/usr/bin"
    assert environment["OPENCDMS_HOME"] == "/srv/cdms"
    assert environment["OPENCDMS_DATABASE_URL"] == "postgresql+psycopg://u:p%40ss@db/cdms"
    assert environment["OPENCDMS_S3_SECRET_ACCESS_KEY"] == "s3cret"
    assert environment["OPENCDMS_USER"] == "alice" and environment["OPENCDMS_JOB_ID"] == "j1"
    assert "OPENCDMS_S3_REGION" not in environment  # unset in the settings: unset in the kernel
    assert base["OPENCDMS_HOME"] == "/wrong"  # the caller's mapping is not changed


# --------------------------------------------------------------------------- runs


def job_count(datastore: Datastore) -> int:
    with datastore.engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(job_table)).scalar_one()


@pytest.mark.postgres
@pytest.mark.parametrize(("name", "parameters", "error"), [
    ("hello", {"x=1;import os;#": 1}, NotebookParameterError),
    ("hello", {"object_key": "../../etc/passwd"}, NotebookParameterError),
    ("hello", {"object_key": "/etc/passwd"}, NotebookParameterError),
    ("hello", {"object_key": "archive/x.csv"}, NotebookParameterError),
    ("hello", {"count": "3"}, NotebookParameterError),
    ("hello", {"colour": "red"}, NotebookParameterError),
    ("missing", {}, UnknownNotebookError),
    ("hello", {"object_key": "incoming/"}, NotebookParameterError),
    ("hello", {"note": "x" * 1001}, NotebookParameterError),
    ("hello", {"note": "nul\x00"}, NotebookParameterError),
    ("hello", {"note": "half\ud800"}, NotebookParameterError),
])
def test_a_bad_request_starts_no_kernel_and_writes_no_job(
    settings: Settings, datastore: Datastore, registry: NotebookRegistry, monkeypatch: pytest.MonkeyPatch,
    name: str, parameters: dict[str, Any], error: type[Exception],
) -> None:
    def no_kernel(*args: object, **kwargs: object) -> None:
        raise AssertionError("a kernel was started for a refused request")

    monkeypatch.setattr(runner, "execute_notebook", no_kernel)
    with pytest.raises(error):
        run_notebook(name, parameters, settings=settings, datastore=datastore, registry=registry)
    assert job_count(datastore) == 0


@pytest.mark.postgres
def test_a_run_records_the_job_the_executed_notebook_the_html_and_the_outputs(
    settings: Settings, datastore: Datastore, bucket: Bucket, registry: NotebookRegistry
) -> None:
    job = run_notebook(
        "hello", {"note": "hi", "loud": True, "count": 3, "stations": ["0-20000-0-60002"]},
        settings=settings, datastore=datastore, bucket=bucket, registry=registry, trigger="test", user="alice",
    )
    assert job.status is JobStatus.SUCCESSFUL, job.error
    assert (job.process, job.trigger, job.requested_by, job.error) == ("hello", "test", "alice", None)
    assert job.parameters == {"note": "hi", "loud": True, "count": 3, "stations": ["0-20000-0-60002"]}
    assert job.created_at <= job.started_at <= job.finished_at  # type: ignore[operator]
    assert get_job(datastore, job.id) == job
    assert get_job(datastore, str(job.id)) == job
    assert [listed.id for listed in list_jobs(datastore, process="hello")] == [job.id]
    assert list_jobs(datastore, status=JobStatus.FAILED) == []

    # The executed notebook and its HTML under runs/<job id>/, parameters injected.
    assert job.notebook_key == f"runs/{job.id}/hello.ipynb" and job.html_key == f"runs/{job.id}/hello.html"
    executed_text = bucket.fs.cat_file(bucket.path(job.notebook_key)).decode()
    executed = nbformat.reads(executed_text, as_version=4)
    injected = [cell.source for cell in executed.cells if "injected-parameters" in cell.metadata.get("tags", [])]
    assert len(injected) == 1 and 'note = "hi"' in injected[0] and "count = 3" in injected[0]
    html = bucket.fs.cat_file(bucket.path(job.html_key)).decode()
    assert html.lstrip().lower().startswith("<!doctype html") and "HI 0-20000-0-60001" in html
    assert not re.search(r'<script[^>]+src="(https?:)?//', html)  # opens without internet
    # Secrets travel in the kernel's environment, never in what is saved.
    for saved in (executed_text, html):
        assert settings.database_url not in saved  # type: ignore[operator]

    # The recorded output, written by the notebook through Settings(): the run's bucket and home.
    assert list(job.outputs) == ["greeting"]
    greeting = job.outputs["greeting"]
    assert greeting.key == f"products/hello/{job.id}.json" and greeting.media_type == "application/json"
    written = json.loads(bucket.fs.cat_file(bucket.path(greeting.key)))
    assert written["greeting"] == "HI 0-20000-0-60001" and written["count"] == 3
    assert written["home"] == str(settings.home) and written["user"] == "alice"
    # ... and the run's database (each test has its own).
    with datastore.engine.connect() as connection:
        names = connection.execute(sa.select(source.c.name, source.c.description)).all()
    assert (f"hello {job.id}", "HI 0-20000-0-60001") in names


@pytest.mark.postgres
def test_a_notebook_failing_midway_leaves_a_failed_job_a_partial_notebook_and_nothing_half_written(
    settings: Settings, datastore: Datastore, bucket: Bucket, registry: NotebookRegistry
) -> None:
    job = run_notebook("fails", {"label": "half-written"}, settings=settings, datastore=datastore, bucket=bucket,
                       registry=registry)
    assert job.status is JobStatus.FAILED
    assert job.error == "RuntimeError: boom after writing half-written"
    assert job.message and job.message.startswith("failed in cell")
    assert job.finished_at is not None and job.outputs == {}
    executed = nbformat.reads(bucket.fs.cat_file(bucket.path(job.notebook_key)).decode(), as_version=4)
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    failing = next(cell for cell in code if "raise RuntimeError" in cell.source)
    assert [output.output_type for output in failing.outputs] == ["stream", "error"]
    assert "before the failure" in failing.outputs[0].text
    assert code[-1].source == "print('never runs')" and code[-1].outputs == []
    assert "papermill-error-cell" in executed.cells[0].source  # papermill's banner, linking to the cell
    assert bucket.fs.exists(bucket.path(job.html_key))
    with datastore.engine.connect() as connection:
        assert connection.execute(sa.select(source.c.id).where(source.c.name == "half-written")).first() is None
    assert get_job(datastore, job.id).status is JobStatus.FAILED


@pytest.mark.postgres
def test_a_job_runs_once(settings: Settings, datastore: Datastore, bucket: Bucket, registry: NotebookRegistry) -> None:
    job = submit_job(datastore, registry, "plain", {}, trigger="schedule", user="events")
    assert job.status is JobStatus.ACCEPTED and job.started_at is None
    done = execute_job(job, settings=settings, datastore=datastore, bucket=bucket, registry=registry)
    assert done.status is JobStatus.SUCCESSFUL and done.outputs == {}
    with pytest.raises(JobStateError, match="is successful, not accepted"):
        execute_job(job.id, settings=settings, datastore=datastore, bucket=bucket, registry=registry)


@pytest.mark.postgres
def test_a_cell_timeout_fails_the_job_and_keeps_what_ran(
    settings: Settings, datastore: Datastore, bucket: Bucket, registry: NotebookRegistry
) -> None:
    job = run_notebook("sleeps", {"seconds": 60}, settings=settings, datastore=datastore, bucket=bucket,
                       registry=registry, timeout=2)
    assert job.status is JobStatus.FAILED and job.message == "failed outside the notebook"
    assert job.error and job.error.startswith("CellTimeoutError")
    executed = bucket.fs.cat_file(bucket.path(job.notebook_key)).decode()
    assert "waiting" in executed  # the partial notebook, saved


@pytest.mark.postgres
def test_runs_in_threads_each_give_their_own_environment_to_their_kernel(
    settings: Settings, datastore: Datastore, bucket: Bucket, registry: NotebookRegistry
) -> None:
    import os
    from concurrent.futures import ThreadPoolExecutor

    before = dict(os.environ)
    with ThreadPoolExecutor(2) as pool:
        jobs = list(pool.map(lambda user: run_notebook(
            "hello", {"note": user}, settings=settings, datastore=datastore, bucket=bucket, registry=registry,
            user=user), ["ann", "bob"]))
    for job, user in zip(jobs, ["ann", "bob"]):
        assert job.status is JobStatus.SUCCESSFUL, job.error
        written = json.loads(bucket.fs.cat_file(bucket.path(job.outputs["greeting"].key)))
        assert (written["user"], written["greeting"]) == (user, f"{user} 0-20000-0-60001")
    assert dict(os.environ) == before


@pytest.mark.postgres
@pytest.mark.s3
def test_a_run_on_an_s3_bucket_reaches_it_from_the_kernel(
    s3_settings: Settings, registry: NotebookRegistry
) -> None:
    with Datastore.open(s3_settings) as datastore:
        job = run_notebook("hello", {"note": "s3"}, settings=s3_settings, datastore=datastore, registry=registry)
    assert job.status is JobStatus.SUCCESSFUL, job.error
    from opencdms_kernel.bucket import open_bucket

    bucket = open_bucket(s3_settings)
    assert bucket.fs.exists(bucket.path(job.notebook_key)) and bucket.fs.exists(bucket.path(job.html_key))
    assert json.loads(bucket.fs.cat_file(bucket.path(job.outputs["greeting"].key)))["greeting"].startswith("s3 ")
    executed = bucket.fs.cat_file(bucket.path(job.notebook_key)).decode()
    assert "testing" not in executed.replace("OPENCDMS_", "")  # the S3 keys stayed in the environment


# --------------------------------------------------------------------------- command line


def cli(args: list[str], settings: Settings) -> Any:
    from opencdms_kernel.cli import app

    environment = {"OPENCDMS_HOME": str(settings.home), "OPENCDMS_DATABASE_URL": settings.database_url,
                   "OPENCDMS_BUCKET_URL": settings.bucket_url, "COLUMNS": "200"}
    return CliRunner().invoke(app, args, env=environment)


@pytest.mark.postgres
def test_the_notebooks_commands(settings: Settings, datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    folder = ["--folder", str(FIXTURES)]
    listed = cli(["notebooks", "list", *folder], settings)
    assert listed.exit_code == 0, listed.output
    assert "hello" in listed.output and "Hello station" in listed.output and "object_key: BucketKey" in listed.output
    assert "left out: broken_types.ipynb" in one_line(listed.output)

    shown = cli(["notebooks", "show", "hello", *folder], settings)
    assert shown.exit_code == 0, shown.output
    assert "Writes a greeting" in shown.output and "list[WigosId]" in shown.output and "incoming/" in shown.output
    schema = cli(["notebooks", "show", "hello", "--json", *folder], settings)
    assert json.loads(schema.output)["properties"]["count"]["type"] == "integer"

    ran = cli(["notebooks", "run", "hello", *folder, "-p", "note", "cli", "-p", "count", "-4"], settings)
    assert ran.exit_code == 0, ran.output
    job = list_jobs(datastore, process="hello")[0]
    assert job.parameters == {"note": "cli", "count": -4} and job.status is JobStatus.SUCCESSFUL
    text = one_line(ran.output)
    assert f"job {job.id}: successful" in text
    assert f"executed notebook: {bucket.url(job.notebook_key)}" in text
    assert f"HTML: {bucket.url(job.html_key)}" in text
    assert f"output greeting: {bucket.url(job.outputs['greeting'].key)}" in text

    failed = cli(["notebooks", "run", "fails", *folder], settings)
    assert failed.exit_code == 1
    assert "failed" in failed.output and "RuntimeError: boom after writing half" in one_line(failed.output)

    for args, expected in [
        (["hello", "-p", "count", "x"], "notebook 'hello', parameter 'count': 'x' is not an integer"),
        (["hello", "-p", "x=1;import os;#", "1"], "parameter 'x=1;import os;#': a parameter name must be a Python identifier"),
        (["hello", "-p", "object_key", "../etc/passwd"], "parameter 'object_key': '../etc/passwd' must not contain"),
        (["hello", "-p", "object_key", "/etc/passwd"], "absolute path or URL"),
        (["hello", "-p", "colour", "red"], "parameter 'colour': unknown parameter"),
        (["hello", "-p", "count"], "give parameters as -p KEY VALUE"),
        (["missing"], "notebook 'missing': no such notebook"),
    ]:
        refused = cli(["notebooks", "run", *args, *folder], settings)
        assert refused.exit_code == 2, (args, refused.output)
        assert expected in one_line(refused.output), (args, refused.output)
        assert "Traceback" not in refused.output
    assert len(list_jobs(datastore)) == 2  # the refused requests left no job

    jobs = cli(["notebooks", "jobs"], settings)
    assert jobs.exit_code == 0 and str(job.id) in jobs.output

    installed = cli(["kernel", "install", "--prefix", str(tmp_path / "env")], settings)
    assert installed.exit_code == 0, installed.output
    spec = json.loads((tmp_path / "env/share/jupyter/kernels/opencdms/kernel.json").read_text())
    assert spec["env"]["OPENCDMS_HOME"] == str(settings.home)


@pytest.mark.parametrize(("notebook", "parameter"), [
    ("normals", "period"), ("station_report", "period"), ("data_availability", "period"),
    ("climat_daycli", "normals_period"),
])
def test_the_project_notebooks_take_their_years_as_a_period(notebook: str, parameter: str) -> None:
    # Declared as the vocabulary's Period, so the registry (and every door that asks it) checks
    # and normalises the years before a kernel starts, and publishes their pattern.
    info = NotebookRegistry(ROOT / "notebooks").get(notebook)
    (spec,) = [spec for spec in info.parameters if spec.name == parameter]
    assert spec.kind is Kind.PERIOD and spec.default == "1991-2020"
    schema = info.parameter_schema()["properties"][parameter]
    assert schema["pattern"] == PERIOD_PATTERN and schema["x-opencdms-kind"] == "Period"
    assert info.validate({parameter: " 1961/1990 "}) == {parameter: "1961-1990"}
    with pytest.raises(NotebookParameterError) as raised:
        info.validate({parameter: "2020-1991"})
    assert str(raised.value) == (f"notebook '{notebook}', parameter '{parameter}': "
                                 "'2020-1991': start year 2020 is after end year 1991")


def test_notebooks_show_publishes_the_pattern_of_a_period(tmp_path: Path) -> None:
    shown = cli(["notebooks", "show", "normals", "--json", "--folder", str(ROOT / "notebooks")],
                Settings(home=tmp_path))
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["properties"]["period"]["pattern"] == PERIOD_PATTERN


def test_period_and_month_parameters_are_the_vocabularys(tmp_path: Path) -> None:
    write_notebook(tmp_path, "years", (
        'period: Period = "1991-2020"  # the years\n'
        'span: Optional[Period] = None  # more years\n'
        'months: list[YearMonth] = []  # months\n'
    ), body="print(period)")
    notebook = tmp_path / "years.ipynb"
    text = notebook.read_text().replace("import BucketKey, record_output", "import BucketKey, Period, YearMonth, record_output")
    notebook.write_text(text)
    registry = NotebookRegistry(tmp_path)
    assert registry.problems() == {}
    info = registry.get("years")
    properties = info.parameter_schema()["properties"]
    assert properties["period"]["type"] == "string" and properties["period"]["x-opencdms-kind"] == "Period"
    assert properties["span"]["type"] == ["string", "null"]
    assert properties["months"]["items"]["type"] == "string" and "pattern" in properties["months"]["items"]
    # Normalised to the vocabulary's text: what a notebook receives is one spelling.
    assert info.validate({"period": " 1961/1990 ", "span": "2020", "months": ["2020-07"]}) == \
        {"period": "1961-1990", "span": "2020-2020", "months": ["2020-07"]}
    for parameters, parameter, words in [
        ({"period": "2020-1991"}, "period", "start year 2020 is after end year 1991"),
        ({"period": "1991-20"}, "period", "is not a year or a range like 1991-2020"),
        ({"period": 1991}, "period", "must be a text (Period), not int 1991"),
        ({"months": ["2020-07", "2020-7"]}, "months", "write the month with two digits) (item 1)"),
    ]:
        with pytest.raises(NotebookParameterError) as raised:
            info.validate(parameters)
        assert (raised.value.notebook, raised.value.parameter) == ("years", parameter)
        assert words in str(raised.value), str(raised.value)
