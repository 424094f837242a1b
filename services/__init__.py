"""OpenCDMS services: the OGC API (``services.api``) and, later, the event service.

Services import the kernel (``opencdms_kernel``); the kernel never imports a service.
"""
