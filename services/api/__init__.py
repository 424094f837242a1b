"""The OGC API service: pygeoapi over the OpenCDMS catalog, with our own plugins.

- :mod:`services.api.config`   the pygeoapi configuration, generated from the catalog, the notebook
  registry and the settings; the OpenAPI document, cached by the configuration's digest
- :mod:`services.api.app`      the ASGI application: pygeoapi's Starlette app behind our layer
  (request context, body limit, offline assets, error mapping)
- :mod:`services.api.runtime`  one datastore (engine and pool) per process, settings from the environment
- :mod:`services.api.errors`   the kernel's error model mapped to OGC exceptions, in one place
- :mod:`services.api.providers` stations (Features), records, observations (EDR), products
- :mod:`services.api.processes` every registered notebook as an OGC process, and the job manager
- :mod:`services.api.cli`      ``opencdms api config|serve|openapi``

Importing this package imports neither pygeoapi nor the web stack.
"""
