"""Voilà's settings for the apps (this folder is on JUPYTER_CONFIG_PATH in users' servers).

The data-entry process behind the server's proxy (apps/proxy.py) gets a token in its
environment and asks every request for it: only the proxy, which adds it, gets in."""

import os

from apps.proxy import TOKEN_VARIABLE

token = os.environ.get(TOKEN_VARIABLE)
if token:
    c.Voila.token = token  # noqa: F821 - ``c`` is the config object traitlets provides
