"""OpenCDMS services: the OGC API (``services.api``), the event service (``services.events``) and
the hub's configuration (``services.hub``).

Services import the kernel (``opencdms_kernel``); the kernel never imports a service.
"""
