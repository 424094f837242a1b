"""Who may administer: people in the hub's ``admin`` role, and no one else.

Every function of :mod:`opencdms_kernel.admin` that changes reference data takes an
:class:`Administrator`, which can only be made for someone whose hub role is ``admin``
(:func:`administrator` reads it from the settings the hub gives each user's server).  The app
checks first, to show its refusal page; the functions check again, so a notebook calling them
directly is refused the same way.  The database checks a third time: each hub user logs in as a
role of their hub role's group (migration 0007), and only the admin group may write stations.
"""

from __future__ import annotations

from dataclasses import dataclass

from opencdms_kernel.errors import NO_APPLICABLE_CODE, OpenCDMSError
from opencdms_kernel.settings import Settings
from opencdms_kernel.vocabulary import HubRole


class AdminOnlyError(OpenCDMSError):
    """Someone who is not an administrator asked for an administrator's action (403)."""

    http_status = 403
    ogc_code = NO_APPLICABLE_CODE
    exit_code = 2

    def __init__(self, user: str, role: HubRole | None) -> None:
        self.user = user
        self.role = role
        shown = role.value if role is not None else "none"
        super().__init__(
            f"{user} is not an administrator (role: {shown}): administration is for the "
            f"{HubRole.ADMIN.value} role; an administrator gives people their roles in the hub")


@dataclass(frozen=True)
class Administrator:
    """A person acting as an administrator: made only when their hub role is ``admin``.

    ``user`` is the name the audit trail records for their changes.
    """

    user: str
    role: HubRole | None = HubRole.ADMIN

    def __post_init__(self) -> None:
        if not self.user or not self.user.strip():
            raise AdminOnlyError("(nobody)", self.role)
        if self.role is not HubRole.ADMIN:
            raise AdminOnlyError(self.user, self.role)


def administrator(settings: Settings) -> Administrator:
    """The person these settings act for (``settings.user``), as an administrator; AdminOnlyError
    when their hub role (``settings.hub_role``) is not ``admin``."""
    return Administrator(settings.user, settings.hub_role)


def require_admin(admin: object) -> Administrator:
    """``admin`` if it is an :class:`Administrator` (the check a writer makes before it writes)."""
    if not isinstance(admin, Administrator):
        raise AdminOnlyError(str(getattr(admin, "user", admin))[:60], None)
    return admin
