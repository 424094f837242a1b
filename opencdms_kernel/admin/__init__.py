"""Administration: what the administration app (``apps/admin.py``) does, as kernel functions.

Stations (:mod:`.stations`), QC rules as new versions (:mod:`.rules`), the element list
(:mod:`.elements`), configuration files edited as text (:mod:`.files`); people and roles are
:mod:`opencdms_kernel.hub_users`.  Every function that changes something takes an
:class:`~.access.Administrator`, which exists only for people in the hub's ``admin`` role.
"""
