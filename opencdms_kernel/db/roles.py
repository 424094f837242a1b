"""The installation's database roles: schema owner, application, read-only.

``migrate.upgrade`` calls :func:`ensure_roles` after the migrations, so ``opencdms db upgrade``
creates them:

- **owner** owns every table, view, sequence and function of the schema and can change the
  schema (it runs migrations when an administrator connects as it);
- **app** is what the services use: reads everything, inserts and updates the data tables
  (through the triggers), never deletes, never truncates, has no DDL, and only reads
  ``observation_history`` (the history is written by the owner's audit trigger);
- **readonly** reads everything and writes nothing.

The hub's roles reach the data too (migration 0007): four group roles that cannot log in,
``<prefix>_admin``, ``_sci``, ``_reviewer`` and ``_clerk`` (:class:`HubRole`), each with only the
grants its hub role needs (:data:`HUB_GRANTS`), and one LOGIN role per hub user
(:func:`ensure_hub_user`), a member of exactly the group of their hub role, given a new password
each time their server starts.  The audit trail's ``superseded_by_role`` is that user's role.

Role names are cluster-wide while an installation is one database, so they are derived from
the database name (``opencdms_<database>_owner`` …; ``OPENCDMS_DATABASE_ROLE_PREFIX`` overrides
the prefix) and recorded in the database's ``database_role`` table the first time.  A database
copied with ``CREATE DATABASE … TEMPLATE`` carries that record with the grants that name the
same roles, so it keeps working with them and never gets roles of its own.  Roles outlive
``DROP DATABASE``: when roles are created, those of databases that are gone are dropped
(:func:`drop_orphaned_roles`).

Passwords are generated (``secrets.token_urlsafe``), kept in
``<var_dir>/secrets/database-roles.json`` (mode 0600) and sent to the server only as SCRAM
verifiers computed by libpq, so neither a statement log nor an error message shows them.
:func:`role_url` gives the connection URL of one role, for handing each part least privilege.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import URL, Connection

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.settings import Settings
from opencdms_kernel.vocabulary import HubRole


class RoleKind(str, Enum):
    """The three roles of an installation."""

    OWNER = "owner"
    APP = "app"
    READONLY = "readonly"


# <prefix>_<suffix>: at most as long as the longest installation suffix ("_readonly"), so every
# prefix valid for the installation's roles is valid for these too.
HUB_GROUP_SUFFIX: dict[HubRole, str] = {
    HubRole.ADMIN: "admin",
    HubRole.SCIENTIST: "sci",
    HubRole.QC_REVIEWER: "reviewer",
    HubRole.CLERK: "clerk",
}
# What each hub role may do in the database (set by _grant_hub_groups, from scratch each upgrade):
HUB_GRANTS: dict[HubRole, str] = {
    HubRole.ADMIN: "everything the app role may (a member of it): read all, insert and update data; no DDL",
    HubRole.SCIENTIST: "read every table; write nothing (writing is done by processes, through the API)",
    HubRole.QC_REVIEWER: "read every table; update an observation's value, flags and comment (decisions); "
                         "resolve differences between keyings",
    HubRole.CLERK: "read reference data (stations, elements, sources, QC rules); insert and update keyings; "
                   "commit a ready sheet through keying_commit (never observation itself)",
}
# The clerk's reference data, and the prefix of the keying tables (the data-entry app's).
CLERK_READS = frozenset({"station", "element", "source", "qc_threshold", "qc_relation"})
KEYING_TABLE = re.compile(r"^keying(_[a-z0-9_]+)?$")
# Keying tables a clerk only reads: a supervisor's resolutions (qc-reviewers insert them) and
# the log (written by its trigger as the owner; nobody else writes it, as for the histories).
KEYING_SUPERVISED = frozenset({"keying_resolution"})
KEYING_READ_ONLY = frozenset({"keying_log"})
# Functions of the data-entry app run as the owner (migration 0009), each checking what it is
# asked: committing a ready sheet as observations, reading what is stored for a sheet.
KEYING_FUNCTIONS = ("keying_commit(bigint)", "keying_observations(bigint)")
# The columns a QC decision changes (qc/manual.py); the stamp trigger sets version/changed_*.
REVIEWER_UPDATES = ("value", "result_quality", "qc_status", "final_flag", "comment")
# A hub user's login role: <prefix>_u<7 hex of the user name's SHA-256>, no longer than the
# installation's own suffixes; the table hub_database_user (unique on both) catches a collision.
_USER_ROLE_SUFFIX = "u"
_USER_ROLE_HEX = 7


class DatabaseRoleError(OpenCDMSError):
    """The installation's database roles cannot be created, found or used; says what to do."""


# Role names are composed into SQL as identifiers; they are also held to this pattern so that
# they need no quoting anywhere (psql, pg_hba.conf, URLs).  63 bytes: PostgreSQL's limit.
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_LONGEST_SUFFIX = max(len(kind.value) for kind in RoleKind) + 1
PREFIX_MAX = 63 - _LONGEST_SUFFIX

# Tables the application role may only read: the history (written by the owner's audit
# trigger), the record of the roles themselves, and alembic's revision.
READ_ONLY_FOR_APP = frozenset({"observation_history", "station_history", "database_role", "alembic_version",
                               "hub_database_user", "keying_log"})

# One upgrade of one database at a time creates roles and changes grants (advisory locks are
# per database; concurrent GRANTs on one object fail with "tuple concurrently updated").
_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('opencdms.database_roles'))"


@dataclass(frozen=True)
class InstallationRoles:
    """The role names of one installation."""

    owner: str
    app: str
    readonly: str

    def __post_init__(self) -> None:
        for kind in RoleKind:
            name = getattr(self, kind.value)
            if not ROLE_NAME.fullmatch(name):
                raise DatabaseRoleError(f"{name!r} is not a valid role name for the {kind.value} role")

    def name(self, kind: RoleKind | str) -> str:
        """The name of the role of ``kind`` (owner, app, readonly)."""
        return getattr(self, RoleKind(kind).value)

    def items(self) -> Iterator[tuple[RoleKind, str]]:
        """(kind, name) of each role, owner first."""
        return ((kind, self.name(kind)) for kind in RoleKind)


def role_prefix(database: str) -> str:
    """The default role prefix of a database: ``opencdms_<database>`` in role-name characters.

    A name that would be too long keeps its start and a hash of the whole, so two long
    database names that share a start still get different roles.
    """
    cleaned = re.sub(r"[^a-z0-9_]", "_", database.lower())
    prefix = cleaned if cleaned.startswith("opencdms") else f"opencdms_{cleaned}"
    if len(prefix) > PREFIX_MAX:
        digest = hashlib.sha256(database.encode("utf-8")).hexdigest()[:8]
        prefix = f"{prefix[:PREFIX_MAX - 9]}_{digest}"
    return prefix


def roles_for(prefix: str) -> InstallationRoles:
    """The role names made from ``prefix``."""
    if len(prefix) > PREFIX_MAX or not ROLE_NAME.fullmatch(prefix):
        raise DatabaseRoleError(
            f"database role prefix {prefix!r}: use at most {PREFIX_MAX} characters a-z, 0-9 "
            "and _, starting with a letter"
        )
    return InstallationRoles(**{kind.value: f"{prefix}_{kind.value}" for kind in RoleKind})


# --------------------------------------------------------------------------- passwords


def secrets_file(settings: Settings) -> Path:
    """Where the installation keeps its database role passwords."""
    return settings.var_dir / "secrets" / "database-roles.json"


def stored_passwords(path: Path) -> dict[str, str]:
    """Role name -> password from the secrets file (empty when there is none yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        passwords = json.loads(text)["roles"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatabaseRoleError(f"{path} is not a database role secrets file: {exc!r}") from exc
    return dict(passwords)


def _store_passwords(path: Path, add: Mapping[str, str], remove: Iterable[str] = ()) -> None:
    """Merge ``add`` into the secrets file and drop ``remove``: private folder, mode 0600,
    atomic replace.

    Several processes may write at once (tests migrate many databases in parallel), so the
    read-merge-write holds an exclusive lock on a file beside it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = stored_passwords(path) | dict(add)
        for name in remove:
            merged.pop(name, None)
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=".database-roles-")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:  # mkstemp: mode 0600
                json.dump({"roles": merged}, out, indent=2, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, path)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise


def _verifier(raw: psycopg.Connection, role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, computed here by libpq: the server (and its
    statement log) sees the verifier, never the password."""
    return raw.pgconn.encrypt_password(
        password.encode("utf-8"), role.encode("utf-8"), b"scram-sha-256"
    ).decode("ascii")


# --------------------------------------------------------------------------- the roles


def _raw(connection: Connection) -> psycopg.Connection:
    """The psycopg connection under ``connection`` (same transaction), for composed SQL."""
    return connection.connection.driver_connection  # type: ignore[return-value]


def _record_exists(connection: Connection) -> bool:
    return connection.execute(sa.text("SELECT to_regclass('public.database_role') IS NOT NULL")).scalar_one()


def recorded_roles(connection: Connection) -> InstallationRoles | None:
    """The roles recorded in this database, or None before they were first created."""
    rows = dict(connection.execute(sa.text("SELECT kind, role_name FROM database_role")).all())
    if not rows:
        return None
    if set(rows) != {kind.value for kind in RoleKind}:
        raise DatabaseRoleError(f"database_role records {sorted(rows)}; expected owner, app and readonly")
    return InstallationRoles(**rows)


def _marker(kind: RoleKind, database: str) -> str:
    """The comment on a role this code created: whose it is."""
    return f"OpenCDMS {kind.value} role of database {database}"


_MARKER = re.compile(r"^OpenCDMS (owner|app|readonly|admin|sci|reviewer|clerk|hub user) role of database (.+)$")


def drop_orphaned_roles(connection: Connection) -> list[str]:
    """Drop the roles this code created for databases that no longer exist on the server.

    Role names are cluster-wide and outlive ``DROP DATABASE``; test runs create a database
    (and its roles) per session.  A role is dropped only when its comment marks it as an
    OpenCDMS role, the database it names is gone, and nothing in any database depends on it
    (a copy or a renamed database still using it keeps it: PostgreSQL refuses the drop, and
    the role is skipped).  Returns the names dropped.
    """
    databases = set(connection.execute(sa.text("SELECT datname FROM pg_database")).scalars())
    candidates = [
        name
        for name, marker in connection.execute(sa.text(
            "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
            "WHERE shobj_description(oid, 'pg_authid') LIKE 'OpenCDMS % role of database %' "
            "ORDER BY rolname"))
        if (found := _MARKER.fullmatch(marker)) and found.group(2) not in databases
    ]
    dropped = []
    raw = _raw(connection)
    for name in candidates:
        try:
            with connection.begin_nested():
                raw.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
        except (
            psycopg.errors.DependentObjectsStillExist,  # still used somewhere: keep it
            psycopg.errors.UndefinedObject,  # dropped meanwhile by another session
            psycopg.errors.InsufficientPrivilege,  # not ours to drop (PostgreSQL 16 ADMIN rules)
            psycopg.errors.InternalError_,  # "tuple concurrently deleted": the same race
        ):
            continue
        dropped.append(name)
    return dropped


def _existing_role(connection: Connection, name: str) -> sa.Row | None:
    return connection.execute(
        sa.text(
            "SELECT r.rolsuper, r.rolcreaterole, r.rolbypassrls, "
            "       shobj_description(r.oid, 'pg_authid') AS marker "
            "FROM pg_roles AS r WHERE r.rolname = :name"
        ),
        {"name": name},
    ).first()


def _may_create_roles(connection: Connection) -> bool:
    return connection.execute(
        sa.text("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    ).scalar_one()


def _create_role(connection: Connection, kind: RoleKind, name: str, database: str, password: str) -> None:
    raw = _raw(connection)
    create = sql.SQL(
        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
        "PASSWORD {}"
    ).format(sql.Identifier(name), sql.Literal(_verifier(raw, name, password)))
    try:
        # A savepoint: the error of a role created meanwhile by another database's upgrade
        # must not abort the caller's transaction before we can say what happened.
        with connection.begin_nested():
            raw.execute(create)
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation) as exc:
        raise DatabaseRoleError(
            f"role {name} was created at the same time by another database on this server; "
            "give this installation its own OPENCDMS_DATABASE_ROLE_PREFIX"
        ) from exc
    raw.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
        sql.Identifier(name), sql.Literal(_marker(kind, database))))


def _adopt_or_create(
    connection: Connection, roles: InstallationRoles, database: str, recorded: bool, path: Path
) -> None:
    """Create the roles that are missing (with the stored password, else a new one)."""
    passwords = stored_passwords(path)
    missing = []
    for kind, name in roles.items():
        existing = _existing_role(connection, name)
        if existing is None:
            missing.append((kind, name))
        elif not recorded and existing.marker != _marker(kind, database):
            # Not ours (or another database's): never take over a role by its name alone.
            raise DatabaseRoleError(
                f"role {name} already exists on this server and is not the {kind.value} role of "
                f"database {database}; set OPENCDMS_DATABASE_ROLE_PREFIX to another prefix"
            )
        elif existing.rolsuper or existing.rolcreaterole or existing.rolbypassrls:
            raise DatabaseRoleError(
                f"role {name} has SUPERUSER, CREATEROLE or BYPASSRLS; the installation's roles "
                "must not (ALTER ROLE … NOSUPERUSER NOCREATEROLE NOBYPASSRLS)"
            )
    if not missing:
        return
    if not _may_create_roles(connection):
        raise DatabaseRoleError(
            f"roles {', '.join(name for _, name in missing)} do not exist and the account of "
            "database_url may not create roles: run `opencdms db upgrade` once as a superuser "
            "(or a role with CREATEROLE)"
        )
    new = {name: passwords.get(name) or secrets.token_urlsafe(32) for _, name in missing}
    # A new installation on this server: first clear away the roles of dropped databases.
    # Stored before the roles exist: if this transaction fails, the next attempt creates them
    # with the same passwords; the reverse order could leave roles nobody can log in as.
    _store_passwords(path, new, remove=drop_orphaned_roles(connection))
    for kind, name in missing:
        _create_role(connection, kind, name, database, new[name])


def _owned_elsewhere(connection: Connection, owner: str) -> list[tuple[str, str]]:
    """(kind, name) of the schema's objects not yet owned by ``owner``.

    Sequences that belong to a table column follow their table; objects of extensions stay
    with the extension.
    """
    rows = connection.execute(
        sa.text(
            """
            SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                  WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                                  ELSE 'TABLE' END, c.relname
            FROM pg_class AS c
            WHERE c.relnamespace = 'public'::regnamespace
              AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
              AND c.relowner <> to_regrole(:owner)
              AND NOT EXISTS (SELECT 1 FROM pg_depend AS d
                              WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
            UNION ALL
            SELECT 'ROUTINE', p.oid::regprocedure::text
            FROM pg_proc AS p
            WHERE p.pronamespace = 'public'::regnamespace AND p.proowner <> to_regrole(:owner)
              AND NOT EXISTS (SELECT 1 FROM pg_depend AS d
                              WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                AND d.deptype = 'e')
            ORDER BY 1 DESC, 2
            """
        ),
        {"owner": owner},
    ).all()
    return [(kind, name) for kind, name in rows]


# A routine's signature as regprocedure prints it for the public schema, e.g.
# qc_status_of(jsonb,boolean): checked before it is composed into ALTER ROUTINE.
_SIGNATURE = re.compile(r"^[a-z_][a-z0-9_]*\([a-z0-9_ ,\[\]]*\)$")


def _transfer_ownership(connection: Connection, owner: str) -> None:
    """Make ``owner`` the owner of everything in the schema (after any migration)."""
    raw = _raw(connection)
    for kind, name in _owned_elsewhere(connection, owner):
        if kind == "ROUTINE":
            if not _SIGNATURE.fullmatch(name):
                raise DatabaseRoleError(f"unexpected routine signature {name!r} in schema public")
            target = sql.SQL(name)
        else:
            target = sql.Identifier("public", name)
        raw.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(kind), target, sql.Identifier(owner)))


def _grant(connection: Connection, roles: InstallationRoles) -> None:
    """Set the privileges of the app and read-only roles to exactly what they should be."""
    raw = _raw(connection)
    owner, app, readonly = (sql.Identifier(name) for _, name in roles.items())
    raw.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(owner))
    raw.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}, {}").format(app, readonly))
    # Before PostgreSQL 15 every role may create objects in schema public.
    if connection.execute(
        sa.text("SELECT has_schema_privilege(:role, 'public', 'CREATE')"), {"role": roles.readonly}
    ).scalar_one():
        raw.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    # From scratch each time, so that a privilege granted by hand or by an older version of
    # this code does not survive an upgrade.
    for what in ("TABLES", "SEQUENCES"):
        raw.execute(sql.SQL("REVOKE ALL ON ALL {} IN SCHEMA public FROM {}, {}").format(
            sql.SQL(what), app, readonly))
    raw.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}, {}").format(app, readonly))
    writable = [
        name for (name,) in connection.execute(sa.text(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relkind IN ('r', 'p') ORDER BY relname"))
        if name not in READ_ONLY_FOR_APP
    ]
    if writable:
        # No DELETE and no TRUNCATE: the application never deletes (status = 'deleted').
        # UPDATE on station/element/source is also what lets the reference and range triggers
        # lock those rows FOR KEY SHARE / FOR SHARE.
        raw.execute(sql.SQL("GRANT INSERT, UPDATE ON {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier("public", name) for name in writable), app))
    sequences = [
        name for (name,) in connection.execute(sa.text(
            """
            SELECT s.relname FROM pg_class AS s
            WHERE s.relnamespace = 'public'::regnamespace AND s.relkind = 'S'
              AND NOT EXISTS (SELECT 1 FROM pg_depend AS d JOIN pg_class AS t ON t.oid = d.refobjid
                              WHERE d.classid = 'pg_class'::regclass AND d.objid = s.oid
                                AND d.deptype IN ('a', 'i') AND t.relname = ANY (:protected))
            ORDER BY s.relname
            """), {"protected": sorted(READ_ONLY_FOR_APP)})
    ]
    if sequences:
        raw.execute(sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier("public", name) for name in sequences), app))


def ensure_roles(connection: Connection, settings: Settings) -> InstallationRoles | None:
    """Create the installation's roles if needed, give the owner the schema, set the grants.

    Idempotent, and run in the caller's transaction after every upgrade.  Returns the roles,
    or None while the schema is older than migration 0003 (which records them).  Needs a
    superuser or CREATEROLE account the first time; afterwards, when the roles exist, the
    schema owner itself may run it.
    """
    if not _record_exists(connection):
        return None
    connection.execute(sa.text(_LOCK_SQL))
    database = connection.execute(sa.text("SELECT current_database()")).scalar_one()
    roles = recorded_roles(connection)
    recorded = roles is not None
    if roles is None:
        roles = roles_for(settings.database_role_prefix or role_prefix(database))
    try:
        _adopt_or_create(connection, roles, database, recorded, secrets_file(settings))
        if not recorded:
            connection.execute(
                sa.text("INSERT INTO database_role (kind, role_name) VALUES (:kind, :name)"),
                [{"kind": kind.value, "name": name} for kind, name in roles.items()],
            )
        _transfer_ownership(connection, roles.owner)
        _grant(connection, roles)
        if _hub_table_exists(connection):
            _ensure_hub_groups(connection, roles)
            _grant_hub_groups(connection, roles)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseRoleError(
            f"setting up the database roles of {database} needs more privileges than the "
            f"account of database_url has: {exc}"
        ) from exc
    return roles


def installation_roles(datastore: Datastore) -> InstallationRoles:
    """The roles recorded in the datastore; raises when ``opencdms db upgrade`` has not made them."""
    with datastore.engine.connect() as connection:
        roles = recorded_roles(connection) if _record_exists(connection) else None
    if roles is None:
        raise DatabaseRoleError("this database has no OpenCDMS roles yet: run `opencdms db upgrade`")
    return roles


def _settings_of(datastore: Datastore) -> Settings:
    if datastore.settings is None:
        raise DatabaseRoleError("open the datastore with Datastore.open(settings) to use its roles")
    return datastore.settings


def role_url(datastore: Datastore, kind: RoleKind | str) -> URL:
    """The connection URL of the installation's role ``kind`` (owner, app, readonly).

    Same server and database as the datastore, that role's name and password.  ``str()`` of
    the URL hides the password; ``render_as_string(hide_password=False)`` gives it.
    """
    roles = installation_roles(datastore)
    name = roles.name(kind)
    path = secrets_file(_settings_of(datastore))
    password = stored_passwords(path).get(name)
    if password is None:
        raise DatabaseRoleError(
            f"no password for role {name} in {path}: the roles were created by another "
            "installation (or the file was lost); reset_passwords() gives them new ones"
        )
    return datastore.url.set(username=name, password=password)


def reset_passwords(datastore: Datastore) -> InstallationRoles:
    """Give the installation's roles new passwords and store them in this installation's file.

    Other installations using the same roles lose their logins.  The file is written first:
    if the change fails on the server, running this again repairs it.
    """
    roles = installation_roles(datastore)
    path = secrets_file(_settings_of(datastore))
    new = {name: secrets.token_urlsafe(32) for _, name in roles.items()}
    _store_passwords(path, add=new)
    with datastore.engine.begin() as connection:
        raw = _raw(connection)
        try:
            for name, password in new.items():
                raw.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(_verifier(raw, name, password))))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DatabaseRoleError(f"changing role passwords needs CREATEROLE or a superuser: {exc}") from exc
    return roles


def drop_roles(datastore: Datastore) -> None:
    """Remove the installation's roles (e.g. before dropping its database).

    In this database their objects go to the connected account and their privileges are
    revoked; the roles themselves can only be dropped when no other database still uses them
    (a copy made from this one), which PostgreSQL reports.  The hub's group roles and the hub
    users' login roles recorded in this database go with them.
    """
    roles = installation_roles(datastore)
    with datastore.engine.begin() as connection:
        raw = _raw(connection)
        hub_names: list[str] = []
        if _hub_table_exists(connection):
            hub_names = list(connection.execute(sa.text(
                "SELECT role_name FROM hub_database_user ORDER BY role_name")).scalars())
            connection.execute(sa.text("DELETE FROM hub_database_user"))
        hub_names += hub_group_roles(roles).values()
        present = [name for name in hub_names if _existing_role(connection, name) is not None]
        names = [sql.Identifier(name) for _, name in roles.items()] + [sql.Identifier(n) for n in present]
        try:
            raw.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(names[0]))
            raw.execute(sql.SQL("DROP OWNED BY {}").format(sql.SQL(", ").join(names)))
            connection.execute(sa.text("DELETE FROM database_role"))
            raw.execute(sql.SQL("DROP ROLE {}").format(sql.SQL(", ").join(names)))
        except psycopg.errors.DependentObjectsStillExist as exc:
            raise DatabaseRoleError(f"the roles are still used by another database: {exc}") from exc


# --------------------------------------------------------------------------- the hub's roles


def hub_group_roles(roles: InstallationRoles) -> dict[HubRole, str]:
    """The database group role of each hub role: ``<prefix>_admin``, ``_sci``, ``_reviewer``, ``_clerk``.

    The prefix is the installation's (its owner role's name without ``_owner``), so a database
    copied from this one uses the same groups.
    """
    prefix = roles.owner.removesuffix("_" + RoleKind.OWNER.value)
    return {role: f"{prefix}_{suffix}" for role, suffix in HUB_GROUP_SUFFIX.items()}


def hub_user_role_name(roles: InstallationRoles, hub_user: str) -> str:
    """The login role of hub user ``hub_user`` in this installation (``<prefix>_u<7 hex>``)."""
    if not hub_user or len(hub_user) > 255:
        raise DatabaseRoleError(f"hub user name {hub_user[:40]!r}: give 1 to 255 characters")
    prefix = roles.owner.removesuffix("_" + RoleKind.OWNER.value)
    digest = hashlib.sha256(hub_user.encode("utf-8")).hexdigest()[:_USER_ROLE_HEX]
    return f"{prefix}_{_USER_ROLE_SUFFIX}{digest}"


def _hub_table_exists(connection: Connection) -> bool:
    return connection.execute(sa.text("SELECT to_regclass('public.hub_database_user') IS NOT NULL")).scalar_one()


def _marked_database(connection: Connection, name: str) -> str | None:
    """The database named in the OpenCDMS comment of role ``name`` (None: no such comment)."""
    existing = _existing_role(connection, name)
    found = _MARKER.fullmatch(existing.marker or "") if existing is not None else None
    return found.group(2) if found else None


def _ensure_hub_groups(connection: Connection, roles: InstallationRoles) -> None:
    """Create the hub's group roles (NOLOGIN) that are missing; never take over another's."""
    # A copy of the database (CREATE DATABASE … TEMPLATE) shares the roles of the original,
    # whose name the owner role's comment carries: the groups must carry the same one.
    database = _marked_database(connection, roles.owner) or connection.execute(
        sa.text("SELECT current_database()")).scalar_one()
    raw = _raw(connection)
    for role, name in hub_group_roles(roles).items():
        marker = f"OpenCDMS {HUB_GROUP_SUFFIX[role]} role of database {database}"
        existing = _existing_role(connection, name)
        if existing is not None:
            if existing.marker != marker:
                raise DatabaseRoleError(
                    f"role {name} already exists on this server and is not the {role.value} hub role of "
                    f"database {database}; set OPENCDMS_DATABASE_ROLE_PREFIX to another prefix"
                )
            if existing.rolsuper or existing.rolcreaterole or existing.rolbypassrls:
                raise DatabaseRoleError(f"role {name} has SUPERUSER, CREATEROLE or BYPASSRLS; it must not")
            continue
        if not _may_create_roles(connection):
            raise DatabaseRoleError(
                f"the hub role {name} does not exist and the account of database_url may not create "
                "roles: run `opencdms db upgrade` once as a superuser (or a role with CREATEROLE)"
            )
        try:
            with connection.begin_nested():
                raw.execute(sql.SQL(
                    "CREATE ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
                ).format(sql.Identifier(name)))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation) as exc:
            raise DatabaseRoleError(
                f"role {name} was created at the same time by another database on this server; "
                "give this installation its own OPENCDMS_DATABASE_ROLE_PREFIX"
            ) from exc
        raw.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(name), sql.Literal(marker)))


def _member_of(connection: Connection, member: str, group: str) -> bool:
    return connection.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM pg_auth_members WHERE roleid = to_regrole(:group) "
                "AND member = to_regrole(:member))"),
        {"group": group, "member": member},
    ).scalar_one()


def _grant_hub_groups(connection: Connection, roles: InstallationRoles) -> None:
    """Set the hub groups' privileges to exactly :data:`HUB_GRANTS` (from scratch, as ``_grant``)."""
    raw = _raw(connection)
    groups = hub_group_roles(roles)
    ident = {role: sql.Identifier(name) for role, name in groups.items()}
    every = sql.SQL(", ").join(ident.values())
    raw.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(every))
    for what in ("TABLES", "SEQUENCES"):  # table-level REVOKE also revokes column privileges
        raw.execute(sql.SQL("REVOKE ALL ON ALL {} IN SCHEMA public FROM {}").format(sql.SQL(what), every))
    # admin: the application role's privileges, through membership (one list of them, in _grant).
    if not _member_of(connection, groups[HubRole.ADMIN], roles.app):
        raw.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(roles.app), ident[HubRole.ADMIN]))
    raw.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}, {}").format(
        ident[HubRole.SCIENTIST], ident[HubRole.QC_REVIEWER]))
    raw.execute(sql.SQL("GRANT UPDATE ({}) ON public.observation TO {}").format(
        sql.SQL(", ").join(sql.Identifier(column) for column in REVIEWER_UPDATES), ident[HubRole.QC_REVIEWER]))
    tables = list(connection.execute(sa.text(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind IN ('r', 'p', 'v') ORDER BY relname")).scalars())
    reads = [name for name in tables if name in CLERK_READS]
    keying_reads = [name for name in tables if name in KEYING_SUPERVISED | KEYING_READ_ONLY]
    keyings = [name for name in tables if KEYING_TABLE.fullmatch(name) and name not in keying_reads]
    clerk = ident[HubRole.CLERK]
    reads += keying_reads
    if reads:
        raw.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier("public", name) for name in reads), clerk))
    _grant_keying_supervision(connection, roles, [name for name in tables if name in KEYING_SUPERVISED])
    if keyings:
        raw.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier("public", name) for name in keyings), clerk))
        sequences = list(connection.execute(sa.text(
            """
            SELECT s.relname FROM pg_class AS s
            JOIN pg_depend AS d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.deptype IN ('a', 'i')
            JOIN pg_class AS t ON t.oid = d.refobjid
            WHERE s.relnamespace = 'public'::regnamespace AND s.relkind = 'S' AND t.relname = ANY (:tables)
            ORDER BY s.relname
            """), {"tables": keyings}).scalars())
        if sequences:
            raw.execute(sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(
                sql.SQL(", ").join(sql.Identifier("public", name) for name in sequences), clerk))


def _grant_keying_supervision(connection: Connection, roles: InstallationRoles, supervised: list[str]) -> None:
    """QC reviewers insert resolutions of keying differences; clerks, reviewers and the app role
    (so admins and services) run the keying functions (EXECUTE is revoked from PUBLIC)."""
    raw = _raw(connection)
    groups = hub_group_roles(roles)
    reviewer = sql.Identifier(groups[HubRole.QC_REVIEWER])
    if supervised:
        raw.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier("public", name) for name in supervised), reviewer))
        raw.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier("public", f"{name}_id_seq") for name in supervised), reviewer))
    for function in KEYING_FUNCTIONS:
        if connection.execute(sa.text("SELECT to_regprocedure(:f) IS NOT NULL"), {"f": f"public.{function}"}).scalar_one():
            raw.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}, {}, {}").format(
                sql.SQL(f"public.{function}"), sql.Identifier(roles.app), sql.Identifier(groups[HubRole.CLERK]),
                reviewer))


def ensure_hub_user(datastore: Datastore, hub_user: str, hub_role: HubRole | str) -> URL:
    """Give hub user ``hub_user`` their own database login, a member of ``hub_role``'s group only.

    Called by the hub each time the user's server starts: the role is created if missing, gets
    a **new** password (nothing is stored: the URL returned goes into the server's environment
    and nowhere else), and its group memberships are set to exactly the one of ``hub_role`` (an
    administrator who changed the user's hub role changes their database role at the next
    start).  ``opencdms.user`` defaults to the hub user in this database, so the history's
    ``superseded_by`` names them; ``superseded_by_role`` is the login role, which a session
    cannot change.  Needs a superuser or CREATEROLE account (the hub's ``database_url``).
    """
    role = HubRole(hub_role)
    roles = installation_roles(datastore)
    groups = hub_group_roles(roles)
    name = hub_user_role_name(roles, hub_user)
    password = secrets.token_urlsafe(32)
    with datastore.engine.begin() as connection:
        connection.execute(sa.text(_LOCK_SQL))
        if not _hub_table_exists(connection):
            raise DatabaseRoleError("this database has no hub roles yet (migration 0007): run `opencdms db upgrade`")
        database = connection.execute(sa.text("SELECT current_database()")).scalar_one()
        holder = connection.execute(sa.text("SELECT hub_user FROM hub_database_user WHERE role_name = :name"),
                                    {"name": name}).scalar_one_or_none()
        if holder is not None and holder != hub_user:
            raise DatabaseRoleError(f"hub users {holder!r} and {hub_user!r} map to the same database role {name}")
        raw = _raw(connection)
        existing = _existing_role(connection, name)
        verifier = sql.Literal(_verifier(raw, name, password))
        try:
            if existing is None:
                raw.execute(sql.SQL(
                    "CREATE ROLE {} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                    "NOBYPASSRLS PASSWORD {}").format(sql.Identifier(name), verifier))
                raw.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
                    sql.Identifier(name), sql.Literal(f"OpenCDMS hub user role of database {database}")))
            else:
                found = _MARKER.fullmatch(existing.marker or "")
                if not found or found.group(1) != "hub user":
                    raise DatabaseRoleError(f"role {name} exists and is not an OpenCDMS hub user's role")
                if existing.rolsuper or existing.rolcreaterole or existing.rolbypassrls:
                    raise DatabaseRoleError(f"role {name} has SUPERUSER, CREATEROLE or BYPASSRLS; it must not")
                raw.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), verifier))
            # Exactly one group: any membership a hand or an earlier role left is taken away.
            for other in connection.execute(sa.text(
                    "SELECT g.rolname FROM pg_auth_members AS m JOIN pg_roles AS g ON g.oid = m.roleid "
                    "WHERE m.member = to_regrole(:name)"), {"name": name}).scalars().all():
                if other != groups[role]:
                    raw.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(other), sql.Identifier(name)))
            if not _member_of(connection, name, groups[role]):
                raw.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(groups[role]), sql.Identifier(name)))
            raw.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
                sql.Identifier(name), sql.Identifier(database), sql.Identifier("opencdms", "user"),
                sql.Literal(hub_user)))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DatabaseRoleError(
                f"giving hub user {hub_user!r} a database login needs a superuser or CREATEROLE account: {exc}"
            ) from exc
        connection.execute(sa.text(
            "INSERT INTO hub_database_user (role_name, hub_user, hub_role) VALUES (:name, :user, :role) "
            "ON CONFLICT (role_name) DO UPDATE SET hub_role = excluded.hub_role, updated_at = now()"),
            {"name": name, "user": hub_user, "role": role.value})
    return datastore.url.set(username=name, password=password)


def drop_hub_user(datastore: Datastore, hub_user: str) -> bool:
    """Remove hub user ``hub_user``'s database login (a user deleted from the hub); False if none.

    The history keeps naming the role (``superseded_by_role``) and ``hub_database_user`` is the
    only record of whose it was, so the row stays, marked by the role's absence.
    """
    roles = installation_roles(datastore)
    name = hub_user_role_name(roles, hub_user)
    with datastore.engine.begin() as connection:
        if _existing_role(connection, name) is None:
            return False
        raw = _raw(connection)
        raw.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        raw.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
    return True
