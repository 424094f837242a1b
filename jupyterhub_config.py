"""JupyterHub configuration of OpenCDMS Workbench (JupyterHub 6).

Everything is built from the installation's settings (``OPENCDMS_*`` variables, see
``opencdms_kernel/settings.py``) by ``services/hub/config.py``; a site adds its own file with
``OPENCDMS_HUB_EXTRA_CONFIG`` (OIDC/LDAP details, spawner options), loaded last.  `opencdms up`
starts the hub with this file; by hand: ``jupyterhub -f jupyterhub_config.py`` with
``OPENCDMS_DATABASE_URL`` pointing at the running datastore.  See docs/hub.md.
"""

from opencdms_kernel.settings import Settings
from services.hub.config import configure

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
configure(c, Settings())
