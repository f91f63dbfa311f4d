"""The operator console: live events, per-event traces, the event tester and dead letters, on its
own listener (``admin:`` in the config). :func:`create_admin_app` builds the aiohttp app."""

from proxy.admin.app import create_admin_app

__all__ = ["create_admin_app"]
