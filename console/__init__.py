"""The API keys page: a web console over ``KeyAdmin`` for contact-center admins.

``apikeys-console`` serves it (see :mod:`console.cli`); :func:`create_app`
is the ASGI application, :class:`ConsoleServer` serves it with uvicorn::

    from console import ConsoleServer, load_settings

    server = ConsoleServer(load_settings(["--listen", "127.0.0.1:0", "--dev"]))
    await server.serve()
"""

from console._app import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE, create_app
from console._identity import Admin, DevSignIn
from console._server import ConsoleServer
from console._settings import SETTINGS, ConsoleSettings, SettingsError, load_settings

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "SESSION_COOKIE",
    "SETTINGS",
    "Admin",
    "ConsoleServer",
    "ConsoleSettings",
    "DevSignIn",
    "SettingsError",
    "create_app",
    "load_settings",
]
