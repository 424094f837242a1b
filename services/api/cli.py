"""``opencdms api``: generate the configuration, check it, serve the API.

Registered on the ``opencdms`` command by one ``add_typer`` line in ``opencdms_kernel/cli.py``.
Nothing here imports pygeoapi or the web stack until a command runs.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

import typer
from rich.console import Console

from opencdms_kernel.settings import Settings

api_app = typer.Typer(help="The OGC API service (pygeoapi): configuration and serving.", no_args_is_help=True)
console = Console()


def _settings(host: str | None, port: int | None, prefix: str | None) -> Settings:
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["api_host"] = host
    if port is not None:
        overrides["api_port"] = port
    if prefix is not None:
        overrides["api_prefix"] = prefix.rstrip("/")
    return Settings(**overrides)  # type: ignore[arg-type]


@api_app.command("config")
def config_command(
    host: Optional[str] = typer.Option(None, help="Address to listen on (OPENCDMS_API_HOST)."),
    port: Optional[int] = typer.Option(None, help="Port (OPENCDMS_API_PORT)."),
    prefix: Optional[str] = typer.Option(None, help="URL prefix, e.g. /services/api (OPENCDMS_API_PREFIX)."),
    validate: bool = typer.Option(True, help="Validate the configuration and the OpenAPI document."),
) -> None:
    """Generate the pygeoapi configuration (written only if it changed) and its OpenAPI document."""
    from services.api import config as api_config
    from services.api.app import prepare
    from services.api.runtime import reset_runtime

    settings = _settings(host, port, prefix)
    try:
        files = prepare(settings)
        if validate:
            api_config.validate_config(files.config)
            api_config.validate_openapi(files.openapi)
    finally:
        reset_runtime()
    console.print(f"configuration: {files.config}")
    console.print(f"OpenAPI:       {files.openapi}")


@api_app.command("serve")
def serve_command(
    host: Optional[str] = typer.Option(None, help="Address to listen on (OPENCDMS_API_HOST)."),
    port: Optional[int] = typer.Option(None, help="Port (OPENCDMS_API_PORT)."),
    prefix: Optional[str] = typer.Option(None, help="URL prefix, e.g. /services/api (OPENCDMS_API_PREFIX)."),
) -> None:
    """Serve the API with uvicorn (the configuration is generated first if it changed)."""
    import uvicorn

    from services.api.app import create_app

    settings = _settings(host, port, prefix)
    # Plugins and any child process read the settings from the environment, as the kernel's do.
    os.environ.update(settings.as_environment())
    # A hub that starts services from a non-interactive shell passes SIGINT ignored; stop on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    application = create_app(settings)
    console.print(f"OpenCDMS API on http://{settings.api_host}:{settings.api_port}{settings.api_prefix}/")
    uvicorn.run(application, host=settings.api_host, port=settings.api_port, log_level="warning",
                proxy_headers=False, access_log=False)
