"""The ``opencdms`` command: run the system, manage the datastore, ingest, archive, back up."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import click
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import OpenCDMSError, ParameterError
from opencdms_kernel.ingest import IngestRequest, IngestResult, IngestStatus, ingest_many
from opencdms_kernel.settings import Settings

if TYPE_CHECKING:
    from opencdms_kernel.notebooks import Job

class _OpenCDMSGroup(TyperGroup):
    """The root command: the one place where errors become messages and exit codes.

    A user's error (``OpenCDMSError``) is one whole line and its ``exit_code``; Ctrl-C exits 130;
    anything else is logged with its traceback and reported in one line, without internals.
    Inside the command (not around it) so that ``run()`` and test runners behave alike.
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except OpenCDMSError as exc:
            console.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from exc
        except KeyboardInterrupt:
            console.print("[red]stopped (Ctrl-C)[/red]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise  # already a message and an exit code
        except Exception as exc:  # noqa: BLE001 - the last resort: logged whole, reported in one line
            log.exception("unexpected failure of: opencdms %s", " ".join(sys.argv[1:]))
            where = f"; the log has the details: {_log_path}" if _log_path else ""
            console.print(f"[red]unexpected error ({type(exc).__name__}: {escape(str(exc))}){where}[/red]",
                          soft_wrap=True)
            raise typer.Exit(EXIT_FAILED) from exc


app = typer.Typer(help="OpenCDMS Workbench: climate data management.", no_args_is_help=True,
                  pretty_exceptions_enable=False, cls=_OpenCDMSGroup)
db_app = typer.Typer(help="Datastore schema.", no_args_is_help=True)
stations_app = typer.Typer(help="Station metadata.", no_args_is_help=True)
product_app = typer.Typer(help="Climate products from the Parquet archive.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(stations_app, name="stations")
app.add_typer(product_app, name="product")
notebooks_app = typer.Typer(help="Notebooks as parameterised, recorded processes.", no_args_is_help=True)
kernel_app = typer.Typer(help="The 'opencdms' Jupyter kernel.", no_args_is_help=True)
app.add_typer(notebooks_app, name="notebooks")
app.add_typer(kernel_app, name="kernel")
console = Console()

# Exit codes a script can rely on (README, "The opencdms command").
EXIT_OK = 0  # everything done; for ingest: every file loaded (or unchanged) with no rejected row
EXIT_FAILED = 1  # something failed; for ingest: at least one file was not loaded
EXIT_USAGE = 2  # the command was refused before doing anything (bad option, mapping, parameter)
EXIT_REJECTS = 3  # ingest: every file loaded, but some rows were rejected (see the reject reports)
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C; what was not finished was not stored

log = logging.getLogger("opencdms_kernel.cli")


class _IngestGroup(TyperGroup):
    """``opencdms ingest FILE…`` loads files; ``ingest revert`` and ``ingest ledger`` are its other verbs."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["load", *args]
        return super().parse_args(ctx, args)


ingest_app = typer.Typer(
    cls=_IngestGroup, no_args_is_help=True,
    help="Load CSV files (opencdms ingest FILE… = ingest load FILE…), list the ledger, revert a load.",
)
app.add_typer(ingest_app, name="ingest")


@dataclass
class Context:
    """What every command receives: the settings, built once at start-up."""

    settings: Settings


@app.callback()
def main(ctx: typer.Context) -> None:
    """Build and validate the settings (OPENCDMS_* environment variables) before any command."""
    # The embedded PostgreSQL's wheel asks platformdirs for a runtime folder; the fallback to /tmp
    # is fine here.
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
    try:
        ctx.obj = Context(settings=Settings())
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            console.print(f"[red]setting OPENCDMS_{field.upper()}: {escape(error['msg'])}[/red]", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from exc
    _log_to_file(ctx.obj.settings)


def log_file(settings: Settings) -> Path:
    """Where the command logs what went wrong unexpectedly, with the traceback."""
    return settings.var_dir / "log" / "opencdms.log"


_log_path: Path | None = None  # where this command logs, once the settings are known


def _log_to_file(settings: Settings) -> None:
    """Warnings and errors (with their tracebacks) go to the log file, never to the user's screen."""
    global _log_path
    path = log_file(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
        _log_path = path
    except OSError:
        handler = logging.StreamHandler(sys.stderr)  # an unwritable var/: better on screen than lost
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("opencdms_kernel")
    root.setLevel(logging.INFO)
    root.propagate = False  # never to the screen through the root logger
    root.addHandler(handler)


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj.settings


@contextmanager
def _open(settings: Settings, *, schema: bool = True) -> Iterator[tuple[Datastore, Bucket]]:
    """Open the datastore and the bucket, or exit with the reason.

    ``schema``: the command needs the tables, so a database not migrated to the code's
    revision stops it with what to run (rather than an SQL error about a missing table).
    """
    from opencdms_kernel.db import migrate

    datastore = Datastore.open(settings)  # a DatastoreError says what to check (see run())
    try:
        if schema and (current := migrate.current_revision(datastore)) != (head := migrate.head_revision()):
            console.print(
                f"[red]the datastore's schema is at revision {current or '(none)'}, this code needs {head}: "
                "run `opencdms db upgrade` (or `opencdms up`)[/red]"
            )
            raise typer.Exit(1)
        yield datastore, open_bucket(settings)
    finally:
        datastore.close()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )


@contextmanager
def _working(label: str) -> Iterator[None]:
    """A progress line with elapsed time for work whose size is not known in advance."""
    with _progress() as progress:
        progress.add_task(label, total=None)
        yield


def _results_table(results: list[IngestResult]) -> Table:
    table = Table("file", "status", "read", "new", "changed", "same", "rejected", "seconds")
    table.columns[0].overflow = "fold"  # a long name wraps, it is never cut
    for result in results:
        colour = {"loaded": "green", "skipped": "cyan", "failed": "red", "interrupted": "red"}[result.status.value]
        status = result.status.value
        if result.status is IngestStatus.LOADED and result.rejected:
            colour, status = "yellow", f"loaded, {result.rejected_fraction:.0%} rejected"
        table.add_row(
            escape(result.object_key.rsplit("/", 1)[-1]), f"[{colour}]{status}[/{colour}]",
            f"{result.rows_read:,}", f"{result.inserted:,}", f"{result.updated:,}",
            f"{result.unchanged:,}", f"{result.rejected:,}", f"{result.seconds:.2f}",
        )
    return table


def _print_ingest_notes(results: list[IngestResult], bucket: Bucket) -> None:
    """Every error, warning and reject in full, one per line (never cut to the terminal's width)."""
    for result in results:
        where = escape(result.object_key)
        if result.error:  # it names the file already
            console.print(f"[red]{escape(result.error)}[/red]", soft_wrap=True)
        for warning in result.warnings:
            console.print(f"[yellow]{where}: {escape(warning)}[/yellow]", soft_wrap=True)
        if result.rejected:
            console.print(
                f"[yellow]{where}: {result.rejected:,} rejected rows ({result.rejected_fraction:.1%} of its "
                f"observations); reject report {escape(bucket.url(result.reject_report or ''))}; first ones:[/yellow]",
                soft_wrap=True,
            )
            for row in (result.rejects.slice(0, 5).to_pylist() if result.rejects is not None else []):
                console.print(
                    f"  line {row['line']}, column {escape(repr(row['column']))}: {escape(row['reason'])} "
                    f"({escape(repr(row['value']))})", soft_wrap=True)


def _ingest_exit_code(results: list[IngestResult]) -> int:
    if any(result.status in (IngestStatus.FAILED, IngestStatus.INTERRUPTED) for result in results):
        return EXIT_FAILED
    if any(result.rejected for result in results):
        return EXIT_REJECTS
    return EXIT_OK


def _ingest_with_progress(
    requests: list[tuple[str, object]], datastore: Datastore, bucket: Bucket, user: str, label: str,
    force: bool = False,
) -> list[IngestResult]:
    with _progress() as progress:
        task = progress.add_task(label, total=len(requests))
        return ingest_many(
            requests, datastore, bucket, user,  # type: ignore[arg-type]
            progress=lambda result: progress.advance(task), force=force,
        )


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = typer.Argument("head")) -> None:
    """Apply the schema migrations (alembic) up to REVISION."""
    from opencdms_kernel.db import migrate

    with _open(_settings(ctx), schema=False) as (datastore, _):
        console.print(f"schema at revision {migrate.upgrade(datastore, revision)}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Show the schema revision of the database and of the code."""
    from opencdms_kernel.db import migrate

    with _open(_settings(ctx), schema=False) as (datastore, _):
        console.print(f"database: {migrate.current_revision(datastore)}, code: {migrate.head_revision()}")


@ingest_app.command("load")
def ingest_load(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="CSV files"),
    mapping: Path | None = typer.Option(None, exists=True, dir_okay=False, help="mapping YAML"),
    force: bool = typer.Option(False, help="load again although the same bytes and mapping were loaded"),
) -> None:
    """Ingest CSV files (long layout, or as MAPPING describes).

    Exit codes: 0 every file loaded (or unchanged) with no rejected row; 3 loaded, but rows were
    rejected; 1 a file failed; 2 bad command or mapping; 130 stopped by Ctrl-C.
    """
    from opencdms_kernel.ingest import DEFAULT_LONG_MAPPING, load_mapping

    settings = _settings(ctx)
    chosen = load_mapping(mapping) if mapping else DEFAULT_LONG_MAPPING
    with _open(settings) as (datastore, bucket):
        requests = [(str(path), lambda path=path: IngestRequest.from_path(path, chosen)) for path in files]
        try:
            results = _ingest_with_progress(requests, datastore, bucket, settings.user, "ingest", force=force)
        except KeyboardInterrupt:
            console.print("[red]stopped (Ctrl-C): the file being loaded was not stored; its ledger entry "
                          "says interrupted; files loaded before it stay loaded[/red]", soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    console.print(_results_table(results))
    _print_ingest_notes(results, bucket)
    if any(result.error and "unexpected error" in result.error for result in results):
        console.print(f"log: {log_file(settings)}", soft_wrap=True)
    raise typer.Exit(_ingest_exit_code(results))


@ingest_app.command("revert")
def ingest_revert(ctx: typer.Context, ledger_id: int = typer.Argument(..., help="the ledger id of the load")) -> None:
    """Undo a load: rows it changed go back to their previous version, rows it added are marked deleted."""
    from opencdms_kernel.ingest import revert_load

    settings = _settings(ctx)
    with _open(settings) as (datastore, _):
        result = revert_load(datastore, ledger_id, settings.user)
    console.print(
        f"ingest {result.ledger_id} ({escape(result.object_key)}) reverted: {result.restored:,} values put back "
        f"to their previous version, {result.deleted:,} values it added marked deleted", soft_wrap=True)


@ingest_app.command("ledger")
def ingest_ledger_list(
    ctx: typer.Context, limit: int = typer.Option(20, min=1, help="how many of the latest entries"),
) -> None:
    """The latest ingest ledger entries; loads whose process died are shown (and marked) interrupted."""
    import sqlalchemy as sa

    from opencdms_kernel.db.schema import ingest_ledger
    from opencdms_kernel.ingest import mark_interrupted_loads

    with _open(_settings(ctx)) as (datastore, _):
        with datastore.engine.begin() as connection:
            mark_interrupted_loads(connection)
            rows = connection.execute(
                sa.select(ingest_ledger).order_by(ingest_ledger.c.id.desc()).limit(limit)).all()
    table = Table("id", "file", "status", "rows", "rejected", "started", "by")
    table.columns[1].overflow = "fold"
    for row in rows:
        table.add_row(str(row.id), escape(row.object_key), row.status, f"{row.rows_read or 0:,}",
                      f"{row.rows_rejected or 0:,}", f"{row.started_at:%Y-%m-%d %H:%M:%S}", escape(row.ingested_by))
    console.print(table)
    for row in rows:
        if row.error:
            console.print(f"{row.id}: {escape(row.error)}", soft_wrap=True)


@app.command()
def archive(ctx: typer.Context, full: bool = typer.Option(False, help="rewrite every partition")) -> None:
    """Export observations changed since the last export to the Parquet archive."""
    from opencdms_kernel.archive import export_archive

    with _open(_settings(ctx)) as (datastore, bucket), _progress() as progress:
        task = progress.add_task("archive", total=None)
        result = export_archive(
            datastore, bucket, full=full,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    console.print(
        f"{result.rows:,} observations in {len(result.partitions)} partitions written to "
        f"{bucket.url('archive/observations')} in {result.seconds:.1f} s"
    )


@app.command("demo-data")
def demo_data(
    ctx: typer.Context,
    folder: Path = typer.Option(Path("var/demo"), help="where to write the files"),
    stations: int = typer.Option(50, min=1),
    years: int = typer.Option(30, min=1),
    start_year: int = typer.Option(1991),
    aws_stations: int = typer.Option(3, min=0),
    seed: int = typer.Option(20261127),
) -> None:
    """Write the deterministic demo network (stations, daily and hourly files, error manifest)."""
    from opencdms_kernel.demo import DemoSpec, generate_demo_data

    spec = DemoSpec(stations=stations, years=years, start_year=start_year, aws_stations=aws_stations, seed=seed)
    with _progress() as progress:
        task = progress.add_task("demo data", total=None)
        dataset = generate_demo_data(
            folder, spec, progress=lambda done, total: progress.update(task, completed=done, total=total)
        )
    console.print(
        f"{dataset.observation_count:,} observations in {len(dataset.daily_files)} daily and "
        f"{len(dataset.aws_files)} hourly files under {folder}; stations: {dataset.stations_csv}; "
        f"injected errors: {dataset.manifest}"
    )


@stations_app.command("import")
def stations_import(ctx: typer.Context, file: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Insert or update stations from a CSV file: ours (wigos_id,name,latitude,longitude,…) or a
    wis2box station_list.csv (told by its header)."""
    from opencdms_kernel.stations import import_stations

    with _open(_settings(ctx)) as (datastore, _):
        count = import_stations(datastore, file)  # a bad row: IngestFileError, exit 1 (see run())
    console.print(f"{count} stations imported from {file}")


@stations_app.command("export")
def stations_export(
    ctx: typer.Context,
    file: Path | None = typer.Argument(None),
    format: str = typer.Option("opencdms", help="opencdms, or wis2box (its station_list.csv)"),
) -> None:
    """Write all stations as CSV to FILE (or to standard output)."""
    from opencdms_kernel.stations import StationFormat, export_stations

    try:
        layout = StationFormat(format)
    except ValueError:
        raise typer.BadParameter(f"{format!r}: choose opencdms or wis2box", param_hint="--format") from None
    with _open(_settings(ctx)) as (datastore, _):
        text = export_stations(datastore, layout)
    if file is None:
        sys.stdout.write(text)
    else:
        file.write_text(text, encoding="utf-8")
        console.print(f"stations written to {file}")


@app.command()
def backup(ctx: typer.Context, file: Path = typer.Argument(..., dir_okay=False)) -> None:
    """Dump the whole datastore to FILE (pg_dump custom format)."""
    from opencdms_kernel.db.backup import backup as run_backup

    with _open(_settings(ctx), schema=False) as (datastore, _):
        run_backup(datastore, file)
    console.print(f"backup written to {file} ({file.stat().st_size:,} bytes)")


@app.command()
def restore(ctx: typer.Context, file: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Replace the datastore's contents with the backup FILE (one transaction), then rebuild the
    archive from it, so that DuckDB and PostgreSQL hold the same values again."""
    from opencdms_kernel.archive import export_archive
    from opencdms_kernel.db.backup import restore as run_restore

    with _open(_settings(ctx), schema=False) as (datastore, bucket):
        run_restore(datastore, file)
        console.print(f"restored from {file}")
        with _working("archive: rebuilding from the restored datastore"):
            # The archive's manifest no longer matches the database's exports: a full export.
            exported = export_archive(datastore, bucket)
    console.print(f"archive: {exported.rows:,} observations in {len(exported.partitions)} partitions")


@app.command()
def qc(
    ctx: typer.Context,
    station: list[str] = typer.Option([], help="WIGOS id (repeatable); default: all"),
    element: list[str] = typer.Option([], help="element code (repeatable); default: all"),
    start: datetime | None = typer.Option(None, "--from", formats=["%Y-%m-%d"], help="first UTC day"),
    end: datetime | None = typer.Option(None, "--to", formats=["%Y-%m-%d"], help="last UTC day"),
    test: list[str] = typer.Option([], help="range, step, persistence, consistency, spatial; default: all"),
) -> None:
    """Run the QC checks on the observations in scope and write the flags (values never change)."""
    from opencdms_kernel.qc import run_qc

    settings = _settings(ctx)
    with _open(settings) as (datastore, bucket), _progress() as progress:
        task = progress.add_task("qc", total=None)
        result = run_qc(
            datastore, bucket, user=settings.user, stations=station or None, elements=element or None,
            start=start.date() if start else None, end=end.date() if end else None, tests=test or None,
            progress=lambda stage, done, total: progress.update(
                task, completed=done, total=total, description=f"qc: {stage}"),
        )
    table = Table("test", "tested", "suspect", "failed", "skipped")
    for row in result.summary_rows():
        table.add_row(*(f"{cell:,}" if isinstance(cell, int) else cell for cell in row))
    console.print(table)
    skipped = result.skipped_lines()
    for line in skipped[:10]:
        console.print(f"[yellow]{line}[/yellow]")
    if len(skipped) > 10:
        console.print(f"[yellow]… and {len(skipped) - 10} more series skipped (see qc_run {result.run_id})[/yellow]")
    console.print(f"QC run {result.run_id}: {result.written:,} observations' flags written in {result.seconds:.1f} s")


@app.command()
def decide(
    ctx: typer.Context,
    station: str = typer.Option(..., help="WIGOS id"),
    element: str = typer.Option(..., help="element code"),
    time: datetime = typer.Option(..., formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"], help="UTC time of the value"),
    decision: str = typer.Option(..., help="accept, reject or correct"),
    reason: str = typer.Option(..., help="why (recorded in the audit trail)"),
    value: float | None = typer.Option(None, help="the corrected value (with --decision correct)"),
    duration_seconds: int = typer.Option(86400),
) -> None:
    """Record a person's QC decision on one value; the automatic results stay beside it."""
    from datetime import timezone

    from opencdms_kernel.qc import ObservationKey, decide as record_decision

    settings = _settings(ctx)
    key = ObservationKey(station=station, element=element, phenomenon_time=time.replace(tzinfo=timezone.utc),
                         duration_seconds=duration_seconds)
    with _open(settings) as (datastore, _):
        result = record_decision(datastore, key, decision, reason, settings.user, corrected_value=value)
    console.print(
        f"{station} {element} {time:%Y-%m-%d %H:%M} UTC: {result.decision.value} "
        f"(value {result.previous_value} -> {result.value}), qc_status {result.qc_status.value}, "
        f"final flag {result.final_flag.value}, version {result.version}"
    )


@app.command()
def review(ctx: typer.Context, limit: int = typer.Option(100, min=1)) -> None:
    """Decided values whose source has delivered another value since the decision (to review).

    The decision stays in force; decide again (``opencdms decide``) to settle the new value.
    """
    from opencdms_kernel.qc import source_changes

    with _open(_settings(ctx)) as (datastore, _):
        changes = source_changes(datastore, limit=limit)
    if not changes:
        console.print("no decided value has a changed source")
        return
    table = Table("station", "element", "time (UTC)", "decision", "stored", "decided on", "source now", "ingest")
    for change in changes:
        table.add_row(change.station, change.element, f"{change.phenomenon_time:%Y-%m-%d %H:%M}",
                      change.decision.value, str(change.value), str(change.source_value),
                      str(change.new_source_value), str(change.ingest_id or ""))
    console.print(table)


def _archive_connection(bucket: Bucket):  # type: ignore[no-untyped-def]
    from opencdms_kernel.archive import connect_archive

    return connect_archive(bucket)


def _store_table_product(bucket: Bucket, product: object) -> None:
    from opencdms_kernel.products import write_product

    stored = write_product(bucket, product)  # type: ignore[arg-type]
    if stored.rows == 0:
        console.print(f"[yellow]empty product: {stored.metadata.get('note', 'no data')}[/yellow]")
    else:
        console.print(escape(stored.metadata.get("note", "")), soft_wrap=True)
    console.print(f"{stored.rows:,} rows written to {bucket.url(stored.parquet_key)} (metadata: {stored.metadata_key}), "
                  f"version {stored.version}", soft_wrap=True)
    if stored.replaced is not None:
        console.print(f"[yellow]{escape(stored.replaced.describe())}[/yellow]", soft_wrap=True)


def _qc_policy(exclude_suspect: bool):  # type: ignore[no-untyped-def]
    """The products' QC policy: the default (suspect values count until rejected), or without them."""
    from opencdms_kernel.products import DEFAULT_QC_POLICY, QcPolicy
    from opencdms_kernel.vocabulary import QcStatus

    return QcPolicy((QcStatus.NONE, QcStatus.PASSED)) if exclude_suspect else DEFAULT_QC_POLICY


_EXCLUDE_SUSPECT_HELP = "leave out values QC found suspect (by default they count until a reviewer rejects them)"


@product_app.command("daily")
def product_daily(
    ctx: typer.Context,
    period: str = typer.Argument(..., help="a year or a range, e.g. 2020 or 2019-2020"),
    station: list[str] = typer.Option([], help="WIGOS id (repeatable); default: all"),
    element: list[str] = typer.Option([], help="element code (repeatable); default: TMEAN PRCP RH WSPD PRES"),
    exclude_suspect: bool = typer.Option(False, help=_EXCLUDE_SUSPECT_HELP),
) -> None:
    """Daily summaries of sub-daily (e.g. hourly) values per station-local day."""
    from opencdms_kernel.products import Period, daily_summaries
    from opencdms_kernel.products.context import station_timezones

    with _open(_settings(ctx)) as (datastore, bucket):
        options = {"elements": element} if element else {}
        with _working("daily summaries"):
            product = daily_summaries(
                _archive_connection(bucket), Period.parse(period), stations=station or None,
                timezones=station_timezones(datastore), qc=_qc_policy(exclude_suspect), **options)
        _store_table_product(bucket, product)


@product_app.command("monthly")
def product_monthly(
    ctx: typer.Context,
    period: str = typer.Argument(..., help="a year or a range, e.g. 2020 or 1991-2020"),
    station: list[str] = typer.Option([], help="WIGOS id (repeatable); default: all"),
    element: list[str] = typer.Option([], help="element code (repeatable); default: TMAX TMIN PRCP…"),
    exclude_suspect: bool = typer.Option(False, help=_EXCLUDE_SUSPECT_HELP),
) -> None:
    """Monthly summaries from daily values (days without one made from sub-daily values), with
    the WMO 3/5 completeness rule."""
    from opencdms_kernel.products import Period, monthly_summaries
    from opencdms_kernel.products.context import station_timezones

    with _open(_settings(ctx)) as (datastore, bucket):
        options = {"elements": element} if element else {}
        with _working("monthly summaries"):
            product = monthly_summaries(
                _archive_connection(bucket), Period.parse(period), stations=station or None,
                timezones=station_timezones(datastore), qc=_qc_policy(exclude_suspect), **options)
        _store_table_product(bucket, product)


@product_app.command("normals")
def product_normals(
    ctx: typer.Context,
    period: str = typer.Argument("1991-2020", help="the 30-year period"),
    station: list[str] = typer.Option([], help="WIGOS id (repeatable); default: all"),
    element: list[str] = typer.Option([], help="element code (repeatable); default: all"),
    exclude_suspect: bool = typer.Option(False, help=_EXCLUDE_SUSPECT_HELP),
) -> None:
    """Climatological standard normals (WMO-No. 1203: 80 % of years, at most 3 missing in a row)."""
    from opencdms_kernel.products import Period, climate_normals
    from opencdms_kernel.products.context import station_timezones

    with _open(_settings(ctx)) as (datastore, bucket):
        with _working("normals"):
            product = climate_normals(_archive_connection(bucket), Period.parse(period), stations=station or None,
                                      elements=element or None, timezones=station_timezones(datastore),
                                      qc=_qc_policy(exclude_suspect))
        _store_table_product(bucket, product)


@product_app.command("indices")
def product_indices(
    ctx: typer.Context,
    period: str = typer.Argument(..., help="a year or a range, e.g. 1991-2020"),
    station: list[str] = typer.Option([], help="WIGOS id (repeatable); default: all"),
    index: list[str] = typer.Option([], help="ETCCDI index, e.g. TXx (repeatable); default: all"),
    exclude_suspect: bool = typer.Option(False, help=_EXCLUDE_SUSPECT_HELP),
) -> None:
    """ETCCDI climate indices (xclim), annual and monthly."""
    from opencdms_kernel.products import Period, climate_indices
    from opencdms_kernel.products.context import station_timezones

    with _open(_settings(ctx)) as (datastore, bucket):
        with _working("climate indices"):
            product = climate_indices(_archive_connection(bucket), Period.parse(period), stations=station or None,
                                      indices=index or None, timezones=station_timezones(datastore),
                                      qc=_qc_policy(exclude_suspect))
        _store_table_product(bucket, product)


@product_app.command("climat")
def product_climat(
    ctx: typer.Context,
    station: str = typer.Argument(..., help="WIGOS id"),
    month: str = typer.Argument(..., help="YYYY-MM"),
    normals: str = typer.Option("1991-2020", help="years of the normals in section 2; 'none': no section 2"),
    bufr: bool = typer.Option(True, help="also write the report as BUFR (sequence 3 07 073)"),
    exclude_suspect: bool = typer.Option(False, help=_EXCLUDE_SUSPECT_HELP),
) -> None:
    """CLIMAT (FM 71, sections 1-4) monthly report of one station and month, as text and BUFR."""
    from opencdms_kernel.products import Period
    from opencdms_kernel.products.climat import produce_climat
    from opencdms_kernel.products.climat_bufr import climat_station, produce_climat_bufr
    from opencdms_kernel.products.context import station_timezones

    with _open(_settings(ctx)) as (datastore, bucket):
        year, number = _year_month(month)
        normals_years = None if normals.strip().lower() == "none" else Period.parse(normals, "normals")
        options = {
            "normals_period": None if normals_years is None else (normals_years.start_year, normals_years.end_year),
            "timezones": station_timezones(datastore), "qc": _qc_policy(exclude_suspect),
        }
        with _working("CLIMAT"):
            connection = _archive_connection(bucket)
            report = produce_climat(connection, bucket, station, year, number, **options)
            encoded = (produce_climat_bufr(connection, bucket, station, year, number,
                                           station=climat_station(datastore, station), **options)
                       if bufr and report.key is not None else None)
    if report.key is None:
        console.print(f"[yellow]no report: {escape(report.reason or '')}[/yellow]")
        return
    console.print(report.text, soft_wrap=True)
    console.print(f"written to {bucket.url(report.key)} (metadata: {report.metadata_key}), version {report.version}",
                  soft_wrap=True)
    if report.replaced is not None:
        console.print(f"[yellow]{escape(report.replaced.describe())}[/yellow]", soft_wrap=True)
    if encoded is not None and encoded.key is not None:
        console.print(f"BUFR written to {bucket.url(encoded.key)}, version {encoded.version}", soft_wrap=True)
        for warning in encoded.bufr.warnings if encoded.bufr else ():
            console.print(f"[yellow]warning: {escape(warning)}[/yellow]", soft_wrap=True)
    qc = report.data.qc
    console.print(f"QC: {sum(qc['suspect_values_used'].values())} suspect values used, "
                  f"{sum(qc['values_excluded'].values())} values excluded")


@product_app.command("daycli")
def product_daycli(
    ctx: typer.Context,
    station: str = typer.Argument(..., help="WIGOS id"),
    month: str = typer.Argument(..., help="YYYY-MM"),
    exclude_suspect: bool = typer.Option(False, help=_EXCLUDE_SUSPECT_HELP),
) -> None:
    """DAYCLI daily climate data of one station and month as BUFR (csv2bufr), flags from QC."""
    from opencdms_kernel.products.context import station_timezones
    from opencdms_kernel.products.daycli import produce_daycli, station_metadata

    with _open(_settings(ctx)) as (datastore, bucket):
        year, number = _year_month(month)
        with _working("DAYCLI"):
            product = produce_daycli(_archive_connection(bucket), bucket, station, year, number,
                                     station=station_metadata(datastore, station),
                                     timezones=station_timezones(datastore), qc=_qc_policy(exclude_suspect))
    if product.key is None:
        console.print(f"[yellow]no messages: {escape(product.reason or '')}[/yellow]")
        return
    console.print(f"{len(product.days)} days encoded, written to {bucket.url(product.key)}, version {product.version}",
                  soft_wrap=True)
    if product.replaced is not None:
        console.print(f"[yellow]{escape(product.replaced.describe())}[/yellow]", soft_wrap=True)
    for warning in product.bufr.warnings if product.bufr else ():
        console.print(f"[yellow]warning: {escape(warning)}[/yellow]", soft_wrap=True)


def _year_month(text: str) -> tuple[int, int]:
    from opencdms_kernel.vocabulary import Month

    month = Month.parse(text, "month")
    return month.year, month.month


@app.command()
def up(
    ctx: typer.Context,
    smoke: bool = typer.Option(False, help="check that every part answers, print a summary, exit"),
    demo_stations: int = typer.Option(50, min=1, help="stations of the demo network"),
    demo_years: int = typer.Option(30, min=1, help="years of the demo network"),
) -> None:
    """Start the system: datastore, schema, demo data, the notebook pipeline, JupyterHub with its
    proxy and services (API, events, workers); run until Ctrl-C, which stops everything started."""
    from opencdms_kernel.archive import export_archive
    from opencdms_kernel.db import migrate
    from opencdms_kernel.demo import DemoSpec
    from opencdms_kernel.demo.load import (
        deliver_aws_files, demo_folder, demo_pipeline, demo_processing, load_demo, loaded_demo,
    )
    from opencdms_kernel.health import check_parts, observation_count
    from opencdms_kernel.hub import running_hub, smoke_check

    settings = _settings(ctx)
    spec = DemoSpec(stations=demo_stations, years=demo_years)
    mode = "embedded PostgreSQL under " + str(settings.pgdata_dir) if settings.embedded_database else "external PostgreSQL"
    console.print(f"[bold]OpenCDMS Workbench[/bold] — starting ({mode})")
    with _open(settings, schema=False) as (datastore, bucket):
        console.print(f"datastore: schema at revision {migrate.upgrade(datastore)}")
        if observation_count(datastore) == 0:
            with _progress() as progress:
                task = progress.add_task("demo data: generating", total=None)
                results = load_demo(
                    settings, datastore, bucket, spec,
                    on_generated=lambda dataset: progress.update(
                        task, description="demo data: ingesting", total=len(dataset.daily_files)),
                    on_file=lambda result: progress.advance(task),
                    include_aws=False,
                )
            loaded = [r for r in results if r.status is IngestStatus.LOADED]
            console.print(
                f"demo data: {sum(r.inserted for r in loaded):,} observations from {len(loaded)} files "
                f"in {sum(r.seconds for r in results):.1f} s ({demo_folder(settings)})"
            )
            failed = [r for r in results if r.status is IngestStatus.FAILED]
            for result in failed:
                console.print(f"[red]{result.object_key}: {result.error}[/red]")
        exported = export_archive(datastore, bucket)
        console.print(
            f"archive: {exported.rows:,} observations in {len(exported.partitions)} partitions "
            f"exported in {exported.seconds:.1f} s"
        )
        demo = loaded_demo(settings)  # the network loaded earlier, whatever this start's options say
        # With the event service and the workers behind the hub, the delivered AWS files are theirs
        # to ingest (and QC), as any station's file would be; without them, `up` runs the pipeline.
        through_events = demo is not None and {"events", "worker"} <= set(settings.hub_services)
        jobs: list[Job] = []
        delivered: list[str] = []
        if demo is None:
            console.print("notebook pipeline: skipped (this datastore holds no demo network)")
        elif through_events:
            delivered, _ = deliver_aws_files(bucket, demo[0])
            console.print(f"demo data: {len(delivered)} AWS files delivered to incoming/aws/ for the event service")
        else:
            jobs = _run_pipeline(settings, datastore, bucket, demo_pipeline(demo[0], bucket, demo[1]))
        checks = check_parts(settings, datastore, bucket)
        # The hub gives each user a database login of their own: it gets the running datastore's
        # administrative URL (the embedded superuser, or database_url), never the users' servers.
        with running_hub(settings, database_url=datastore.url.render_as_string(hide_password=False)) as hub:
            if through_events and demo is not None:
                _follow_delivered(datastore, delivered)
                jobs = _run_pipeline(settings, datastore, bucket, demo_processing(demo[1]), queued=True)
            table = Table("part", "status", "detail")
            for check in checks:
                table.add_row(check.part, "[green]ok[/green]" if check.ok else "[red]FAILED[/red]", check.detail)
            table.add_row("hub", "[green]ok[/green]",
                          f"answering on {hub.url}; services: {', '.join(settings.hub_services) or 'none'}")
            console.print(table)
            for check in checks:
                console.print(f"{check.part:<10} {check.location}", soft_wrap=True)
            report = jobs[-1].outputs.get("report") if jobs else None
            if report is not None:
                console.print(f"report     {bucket.url(report.key)}", soft_wrap=True)
            console.print(f"hub        {hub.url}  (log {hub.log})", soft_wrap=True)
            if hub.admin_password is not None:  # printed this once; the hub keeps only its hash
                console.print(f"admin      user [bold]{hub.admin_user}[/bold], password [bold]{hub.admin_password}"
                              "[/bold] (shown once: keep it)", soft_wrap=True)
            else:
                console.print(f"admin      user {hub.admin_user} (password shown when it was created)")
            if not all(check.ok for check in checks):
                raise typer.Exit(1)
            if smoke:
                for line in smoke_check(settings, hub):
                    console.print(f"smoke      {escape(line)}", soft_wrap=True)
                console.print("[green]smoke check passed[/green]")
                return
            if "worker" in settings.hub_services:
                console.print(f"worker     a hub service, {settings.worker_concurrency} notebooks at once",
                              soft_wrap=True)
                console.print("running — press Ctrl-C to stop everything started here")
                _wait_for_interrupt()
            else:
                with _background_worker(settings, datastore, bucket):
                    console.print("running — press Ctrl-C to stop everything started here")
                    _wait_for_interrupt()
    console.print("stopped")


@contextmanager
def _background_worker(settings: Settings, datastore: Datastore, bucket: Bucket) -> Iterator[None]:
    """One job worker in a thread of this process for the block (`up`); stopped and joined after it."""
    from opencdms_kernel.notebooks import run_worker

    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(settings, None, stop),
                              kwargs={"datastore": datastore, "bucket": bucket}, name="opencdms-worker")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _follow_delivered(datastore: Datastore, keys: list[str], timeout: float = 600.0) -> None:
    """Wait, with a progress bar, until the event service has ingested the delivered ``keys``
    (their ledger entries loaded, or skipped as known); exit 1 when one fails or time runs out."""
    from opencdms_kernel.demo.load import delivered_outcomes

    done = {IngestStatus.LOADED.value, IngestStatus.SKIPPED.value}
    deadline = time.monotonic() + timeout
    with _progress() as progress:
        task = progress.add_task("demo data: the event service ingesting incoming/aws/", total=len(keys))
        while True:
            outcomes = delivered_outcomes(datastore, keys)
            progress.update(task, completed=sum(status in done for status in outcomes.values()))
            failed = {key: status for key, status in outcomes.items() if status == IngestStatus.FAILED.value}
            if failed:
                console.print(f"[red]the event service's ingest failed for {', '.join(failed)}: "
                              "`opencdms ingest ledger` and `opencdms events status` say why[/red]")
                raise typer.Exit(1)
            if all(status in done for status in outcomes.values()):
                return
            if time.monotonic() > deadline:
                console.print(f"[red]the event service did not ingest {len(keys)} delivered files within "
                              f"{timeout:.0f} s: see `opencdms events status` and the hub's log[/red]")
                raise typer.Exit(1)
            time.sleep(0.5)


def _run_pipeline(
    settings: Settings, datastore: Datastore, bucket: Bucket, runs: list[tuple[str, dict[str, object]]],
    *, queued: bool = False, timeout: float = 600.0,
) -> list[Job]:
    """Run the notebooks of ``runs`` in order through the registry (in this process, or
    ``queued`` for the worker service); stop at the first failure."""
    from opencdms_kernel.notebooks import JobStatus, run_notebook, submit_job, wait_for_job

    def run(name: str, parameters: dict[str, object]) -> Job:
        if not queued:
            return run_notebook(name, parameters, settings=settings, datastore=datastore, bucket=bucket, trigger="demo")
        job = submit_job(datastore, _registry(settings, None), name, parameters, trigger="demo", user=settings.user)
        return wait_for_job(datastore, job.id, timeout)

    table = Table("notebook", "parameters", "status", "seconds", "outputs", title="notebook pipeline")
    jobs = []
    with _progress() as progress:
        task = progress.add_task("pipeline", total=len(runs))
        for name, parameters in runs:
            progress.update(task, description=f"pipeline: {name}")
            job = run(name, parameters)
            jobs.append(job)
            progress.advance(task)
            seconds = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else 0.0
            table.add_row(
                name, escape(", ".join(f"{k}={v}" for k, v in parameters.items())),
                "[green]successful[/green]" if job.status is JobStatus.SUCCESSFUL else f"[red]{job.status.value}[/red]",
                f"{seconds:.1f}", escape(", ".join(job.outputs)),
            )
            if job.status is not JobStatus.SUCCESSFUL:
                console.print(table)
                console.print(f"[red]{name} failed: {escape(job.error or job.message or '')}[/red]")
                console.print(f"executed notebook: {bucket.url(job.notebook_key)}", soft_wrap=True)
                raise typer.Exit(1)
    console.print(table)
    return jobs


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


# --------------------------------------------------------------------------- notebooks, kernel


_FOLDER_HELP = "notebook folder (default: OPENCDMS_NOTEBOOK_DIR, else the project's notebooks/)"


def _registry(settings: Settings, folder: Path | None):  # type: ignore[no-untyped-def]
    from opencdms_kernel.notebooks import default_notebook_folder, open_registry

    return open_registry(folder or default_notebook_folder(settings))


@notebooks_app.command("list")
def notebooks_list(ctx: typer.Context, folder: Path | None = typer.Option(None, help=_FOLDER_HELP)) -> None:
    """The registered notebooks: name, title, parameters."""
    registry = _registry(_settings(ctx), folder)
    table = Table("name", "title", "parameters")
    for info in registry.notebooks():
        table.add_row(escape(info.name), escape(info.title),
                      escape(", ".join(f"{p.name}: {p.type_label}" for p in info.parameters)))
    console.print(table)
    for problem in registry.problems().values():
        console.print(f"[yellow]left out: {escape(str(problem))}[/yellow]", soft_wrap=True)


@notebooks_app.command("show")
def notebooks_show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="notebook name"),
    folder: Path | None = typer.Option(None, help=_FOLDER_HELP),
    json_schema: bool = typer.Option(False, "--json", help="print the parameters' JSON Schema"),
) -> None:
    """A notebook's description and parameter schema."""
    import json

    info = _registry(_settings(ctx), folder).get(name)
    if json_schema:
        sys.stdout.write(json.dumps(info.parameter_schema(), indent=2) + "\n")
        return
    console.print(f"[bold]{escape(info.title)}[/bold] ({info.name}, {info.path})")
    if info.description:
        console.print(escape(info.description))
    table = Table("parameter", "type", "default", "description")
    for spec in info.parameters:
        note = spec.description + (f" [prefixes: {' '.join(spec.prefixes)}]" if spec.prefixes else "")
        default = json.dumps(spec.default) if spec.has_default else "(expression)"
        table.add_row(spec.name, escape(spec.type_label), escape(default), escape(note))
    console.print(table)


def _parameter_pairs(args: list[str]) -> list[tuple[str, str]]:
    """``-p KEY VALUE`` groups from the command's extra arguments (typer has no 2-value lists)."""
    pairs = []
    index = 0
    while index < len(args):
        if args[index] not in ("-p", "--parameter") or index + 2 >= len(args):
            raise ParameterError(args[index], "unexpected here: give parameters as -p KEY VALUE")
        pairs.append((args[index + 1], args[index + 2]))
        index += 3
    return pairs


@notebooks_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def notebooks_run(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="notebook name"),
    folder: Path | None = typer.Option(None, help=_FOLDER_HELP),
    timeout: float | None = typer.Option(None, help="seconds each cell may take"),
) -> None:
    """Run notebook NAME with parameters given as -p KEY VALUE (repeatable), as a recorded job.

    Prints the job id, its status, where the executed notebook, its HTML and the outputs are.
    A bad request is refused before anything runs (exit 2); a failed run exits 1.
    """
    from opencdms_kernel.notebooks import JobStatus, run_notebook

    settings = _settings(ctx)
    registry = _registry(settings, folder)
    parameters = registry.get(name).parameters_from_text(_parameter_pairs(list(ctx.args)))
    with _open(settings) as (datastore, bucket), _working(f"notebook {name}"):
        job = run_notebook(name, parameters, settings=settings, datastore=datastore, bucket=bucket,
                           registry=registry, timeout=timeout)
    colour = "green" if job.status is JobStatus.SUCCESSFUL else "red"
    console.print(f"job {job.id}: [{colour}]{job.status.value}[/{colour}] ({job.message})", soft_wrap=True)
    if job.error:
        console.print(f"[red]{escape(job.error)}[/red]", soft_wrap=True)
    console.print(f"executed notebook: {bucket.url(job.notebook_key)}", soft_wrap=True)
    console.print(f"HTML: {bucket.url(job.html_key)}", soft_wrap=True)
    for output in job.outputs.values():
        title = f" ({escape(output.title)})" if output.title else ""
        console.print(f"output {output.name}: {bucket.url(output.key)}{title}", soft_wrap=True)
    if job.status is not JobStatus.SUCCESSFUL:
        raise typer.Exit(1)


@notebooks_app.command("jobs")
def notebooks_jobs(
    ctx: typer.Context,
    name: str | None = typer.Option(None, "--notebook", help="only this notebook's jobs"),
    limit: int = typer.Option(20, min=1),
) -> None:
    """The latest notebook jobs."""
    from opencdms_kernel.notebooks import list_jobs

    with _open(_settings(ctx)) as (datastore, _):
        jobs = list_jobs(datastore, process=name, limit=limit)
    table = Table("notebook", "status", "by", "created", "seconds", "error")
    table.add_column("id", no_wrap=True, min_width=36)  # whole, to be copied into `show`/URLs
    for job in jobs:
        seconds = f"{(job.finished_at - job.started_at).total_seconds():.1f}" if job.finished_at and job.started_at else ""
        table.add_row(job.process, job.status.value, f"{job.requested_by} ({job.trigger})",
                      f"{job.created_at:%Y-%m-%d %H:%M}", seconds, escape(job.error or ""), str(job.id))
    console.print(table)


@app.command()
def worker(
    ctx: typer.Context,
    concurrency: int | None = typer.Option(
        None, min=1, help="notebooks run at once (default: OPENCDMS_WORKER_CONCURRENCY)"),
) -> None:
    """Run submitted notebook jobs until Ctrl-C or SIGTERM; several workers may share one datastore.

    Running jobs are given back to the queue on the way out (another worker runs them again).
    """
    from opencdms_kernel.notebooks import run_worker

    settings = _settings(ctx)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with _open(settings) as (datastore, bucket):
        console.print(f"worker: running jobs, {concurrency or settings.worker_concurrency} at once "
                      f"(log {_log_path}); Ctrl-C to stop", soft_wrap=True)
        run_worker(settings, concurrency, stop, datastore=datastore, bucket=bucket)
    console.print("worker stopped")


@kernel_app.command("install")
def kernel_install(
    ctx: typer.Context,
    prefix: Path | None = typer.Option(None, help="environment prefix (default: this one, sys.prefix)"),
) -> None:
    """Install the 'opencdms' kernel spec for this environment's Python (idempotent)."""
    from opencdms_kernel.notebooks.kernelspec import DISPLAY_NAME, KERNEL_NAME, install_kernel_spec

    settings = _settings(ctx)
    folder = install_kernel_spec(settings.home, prefix=prefix)
    console.print(f"kernel '{KERNEL_NAME}' ({DISPLAY_NAME}) in {folder}, OPENCDMS_HOME={settings.home}",
                  soft_wrap=True)


# Commands of the services and apps (``opencdms api``, ``opencdms events``…) are not imported by
# name: each distribution declares its own in the entry-point group below (pyproject.toml,
# ``[project.entry-points."opencdms.commands"]``, ``name = "module:typer_app"``), and they are
# added here after the kernel's own, so the kernel never imports a service.
COMMANDS_ENTRY_POINTS = "opencdms.commands"


def _kernel_command_names(root: typer.Typer) -> set[str]:
    names = {group.name for group in root.registered_groups if group.name}
    for command in root.registered_commands:
        callback_name = command.callback.__name__ if command.callback is not None else ""
        names.add(command.name or callback_name.replace("_", "-"))
    return names


def _unavailable_command(name: str, target: str, reason: str):  # type: ignore[no-untyped-def]
    """A stand-in for a contributed command that cannot be loaded: the other commands still
    work, and this one says why it cannot."""

    def unavailable(ctx: typer.Context) -> None:
        raise PluginCommandError(f"'opencdms {name}' is not available: entry point {target} "
                                 f"({COMMANDS_ENTRY_POINTS}) could not be loaded: {reason}")

    unavailable.__doc__ = f"(unavailable: {reason})"
    return unavailable


class PluginCommandError(OpenCDMSError):
    """A command contributed through an entry point could not be loaded."""

    exit_code = 1


def add_contributed_commands(root: typer.Typer) -> list[str]:
    """Add every command of the ``opencdms.commands`` entry points to ``root``; returns their names.

    A name the kernel already uses, or one declared twice, is left out; an entry point that
    fails to load, or is not a ``typer.Typer``, becomes a command that explains the failure.
    """
    from importlib.metadata import entry_points

    taken = _kernel_command_names(root)
    added: list[str] = []
    for entry in sorted(entry_points(group=COMMANDS_ENTRY_POINTS), key=lambda item: item.name):
        if entry.name in taken:
            log.debug("entry point %s = %s left out: 'opencdms %s' exists already", entry.name, entry.value,
                      entry.name)
            continue
        reason = None
        try:
            commands = entry.load()
        except Exception as exc:  # noqa: BLE001 - any failure of a contributed module; kept and reported
            # Not on the screen at every start (nothing is logged to a file yet): the stand-in
            # command says it when it is used, and --help lists it as unavailable.
            log.debug("entry point %s = %s could not be loaded", entry.name, entry.value, exc_info=exc)
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if not isinstance(commands, typer.Typer):
                reason = f"it is a {type(commands).__name__}, not a typer.Typer"
        if reason is None:
            root.add_typer(commands, name=entry.name)
        else:
            root.command(entry.name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
                _unavailable_command(entry.name, entry.value, reason))
        taken.add(entry.name)
        added.append(entry.name)
    return added


add_contributed_commands(app)


def run() -> None:
    """The ``opencdms`` command (errors are mapped to messages and exit codes by its root group)."""
    app()


if __name__ == "__main__":
    run()
