"""Hub roles reach the data: the record of each hub user's database login, and range checks
that work for roles without UPDATE on the reference tables.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

- ``hub_database_user``: one row per JupyterHub user who was given a database login (their own
  LOGIN role, a member of exactly one hub group role: admin, scientist, qc-reviewer or clerk;
  see ``opencdms_kernel/db/roles.py``).  The role name is what the audit trail records as
  ``superseded_by_role`` (``session_user``), so this table says which hub user that was.
  Written only by the hub's privileged connection: no installation role may change it.
- ``observation_check_new_rows()`` runs as the schema owner (SECURITY DEFINER, pinned
  ``search_path``, EXECUTE revoked from PUBLIC).  It locks the referenced ``element`` /
  ``station`` / ``source`` rows ``FOR SHARE`` / ``FOR KEY SHARE``, which needs UPDATE on those
  tables; a QC reviewer may update an observation's flags but must not be able to edit stations
  or elements, so the check takes the owner's privileges instead of the writer's.  It only reads
  and locks, and raises on bad rows, whoever fires it.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE hub_database_user (
    role_name  text PRIMARY KEY,
    hub_user   text NOT NULL UNIQUE CHECK (length(hub_user) BETWEEN 1 AND 255),
    hub_role   text NOT NULL CHECK (hub_role IN ('admin', 'scientist', 'qc-reviewer', 'clerk')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE hub_database_user IS
    'JupyterHub users and their own database login roles (observation_history.superseded_by_role)';

ALTER FUNCTION observation_check_new_rows() SECURITY DEFINER;
ALTER FUNCTION observation_check_new_rows() SET search_path = pg_catalog, public, pg_temp;
REVOKE EXECUTE ON FUNCTION observation_check_new_rows() FROM PUBLIC;
"""

DOWNGRADE = """
ALTER FUNCTION observation_check_new_rows() SECURITY INVOKER;
ALTER FUNCTION observation_check_new_rows() RESET search_path;
GRANT EXECUTE ON FUNCTION observation_check_new_rows() TO PUBLIC;
DROP TABLE hub_database_user;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
