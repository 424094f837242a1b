"""JupyterHub for OpenCDMS: the configuration ``jupyterhub_config.py`` applies (:mod:`services.hub.config`)
and configurable-http-proxy, installed from npm into ``services/hub/proxy/`` by ``make install``."""
