"""HTTPS for the Tracking API listener (``server.tls``), with certificate reload.

The mobile SDKs (analytics-kotlin, analytics-swift, analytics-react-native) and analytics-next <= 1.83 in
batching mode only speak https, so a single-process install must be able to terminate TLS itself.

Reload without a restart: every TLS handshake picks the *current* context through the documented
``SSLContext.sni_callback`` hook (it may replace ``ssl_object.context``; it runs for every ClientHello,
with ``server_name`` None when the client sent no SNI, as for an IP address). The current context is
rebuilt on SIGHUP and when the certificate or key file changes (checked every few seconds: certbot and
cert-manager replace files, they do not signal us). A rebuilt context is only swapped in once both files
load as a matching pair, so a half-written renewal keeps the old certificate and logs why. Connections
already open keep the certificate they negotiated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog
from aiohttp import web

log = structlog.get_logger("trackrelay.tls")

POLL_INTERVAL = 2.0


def build_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context with Python's secure defaults (TLS 1.2+, no compression, forward-secret
    ciphers) holding this certificate chain and key. Raises ssl.SSLError / OSError when they do not load."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # aiohttp's server speaks HTTP/1.1 only
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ReloadingTLS:
    """``context`` is what the server listens with; each handshake is switched to ``current``."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self._stamps = self._file_stamps()
        self.current = build_context(self.cert_file, self.key_file)
        self.reloads = 0
        self.on_sighup: list[Callable[[], None]] = []  # e.g. the main process passing SIGHUP to its workers
        self.context = build_context(self.cert_file, self.key_file)
        self.context.sni_callback = self._pick

    def _pick(self, ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if ssl_object.context is not self.current:
            ssl_object.context = self.current
        return None

    def _file_stamps(self) -> tuple:
        return (_stamp(self.cert_file), _stamp(self.key_file))

    def reload(self, why: str) -> bool:
        """Rebuild the context from the files; keep the old one if they do not load."""
        stamps = self._file_stamps()
        try:
            ctx = build_context(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            log.error("tls_reload_failed", trigger=why, cert_file=str(self.cert_file), error=str(exc),
                      action="keeping the previous certificate")
            return False
        self.current = ctx
        self._stamps = stamps
        self.reloads += 1
        log.info("tls_reloaded", trigger=why, cert_file=str(self.cert_file))
        return True

    def _sighup(self) -> None:
        self.reload("SIGHUP")
        for forward in self.on_sighup:
            forward()

    def changed(self) -> bool:
        return self._file_stamps() != self._stamps

    async def watch(self, app: object) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: SIGHUP and file-change reloads for the life of the app."""
        loop = asyncio.get_running_loop()
        hup = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self._sighup)
            hup = True

        async def poll() -> None:
            while True:
                await asyncio.sleep(POLL_INTERVAL)
                if self.changed():
                    # a renewal writes two files: give the second one a moment before loading the pair
                    await asyncio.sleep(0.2)
                    if not self.reload("file_changed"):
                        self._stamps = self._file_stamps()  # retry on the next change, not every poll

        task = asyncio.create_task(poll())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)


RELOADER = web.AppKey("tls_reloader", ReloadingTLS)


def attach(app: object, config: object) -> ssl.SSLContext | None:
    """The ssl_context for web.run_app when ``server.tls`` is set (None: plain HTTP), with its
    reload watcher registered on the app. Raises SystemExit with a clear message if the files do
    not load (a certificate that does not match its key, an encrypted key, not PEM)."""
    tls = getattr(getattr(config, "server", None), "tls", None)
    if tls is None:
        return None
    try:
        reloading = ReloadingTLS(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise SystemExit(f"server.tls: cannot load {tls.cert_file} / {tls.key_file}: {exc}") from None
    app.cleanup_ctx.append(reloading.watch)  # type: ignore[attr-defined]
    app[RELOADER] = reloading  # type: ignore[index]
    return reloading.context
