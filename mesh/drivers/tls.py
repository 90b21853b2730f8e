"""The event's TLS key on disk, and the HTTPS server that uses it.

Files:
    tls/FINGERPRINT.key   the private key of the certificate with that SHA-256 (PKCS#8 PEM, 0600):
                          on the organizer that ran `mesh tls set`, and on the members that serve
                          HTTPS once a peer handed it to them (mesh.core.tls)
    run/https/cert.pem    what the running HTTPS server uses: the chain, leaf first (0600)
    run/https/key.pem     ... and its key (0600); both removed when the agent stops serving HTTPS

`serve_https` runs hypercorn with TLS on the `https` address whenever the core says what to serve
(ServeTls), and restarts it when the certificate is replaced or removed. Without a certificate and
key it logs one warning line and serves nothing; the HTTP side keeps working.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from mesh.core.events import DropTlsKeys, LoadTlsKey, ServeTls, StoreTlsKey, TlsKeyLoaded
from mesh.core.tls import LOADING_KEY, NO_CERTIFICATE
from mesh.drivers.agentfiles import RUN_DIR
from mesh.drivers.home import write_atomic
from mesh.state.tls import KEY_BYTES_MAX, TlsCertificate, der_key_matches, is_fingerprint, key_der, key_pem
from mesh.state.tls import load_pem_key

log = logging.getLogger("mesh.agent")

TLS_DIR = "tls"
HTTPS_RUN_DIR = "https"
HTTPS_WARN_GRACE_S = 3.0  # what HTTPS lacks is logged once it has lacked it this long (not while syncing)
HTTPS_RETRY_S = 10.0  # an HTTPS server that could not start (port taken) is tried again this often
QUIET_REASONS = frozenset({LOADING_KEY})  # transient: not a warning


# ---- keys in the home ------------------------------------------------------------------------------


def key_path(home_path: Path, fingerprint: str) -> Path:
    if not is_fingerprint(fingerprint):
        raise ValueError("not a certificate fingerprint")
    return Path(home_path) / TLS_DIR / f"{fingerprint}.key"


def write_key(home_path: Path, fingerprint: str, der: bytes) -> Path:
    """Keep a certificate's private key in the home, readable by this user only."""
    directory = Path(home_path) / TLS_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    path = key_path(home_path, fingerprint)
    write_atomic(path, key_pem(der), 0o600)
    return path


def read_key(home_path: Path, fingerprint: str) -> bytes | None:
    """The key (PKCS#8 DER) this home holds for the certificate, or None (absent or unreadable)."""
    try:
        data = key_path(home_path, fingerprint).read_bytes()
    except (OSError, ValueError):
        return None
    try:
        return key_der(load_pem_key(data))
    except Exception:  # noqa: BLE001 - a damaged file is a missing key: peers can hand it over again
        return None


def holds_key(home_path: Path, certificate: TlsCertificate) -> bool:
    """Whether this home holds a key that matches the certificate."""
    der = read_key(home_path, certificate.fingerprint)
    return der is not None and der_key_matches(certificate, der)


def drop_keys(home_path: Path, fingerprints: tuple[str, ...]) -> list[str]:
    """Delete the keys of these certificates; the fingerprints whose key was here."""
    dropped = []
    for fingerprint in fingerprints:
        try:
            key_path(home_path, fingerprint).unlink()
            dropped.append(fingerprint)
        except (OSError, ValueError):
            continue
    return dropped


async def carry_out(agent, action: LoadTlsKey | StoreTlsKey | DropTlsKeys) -> None:
    """Do what the core asked with the home's key files (on a worker thread); answer with events."""
    home_path = agent.home.path
    try:
        if isinstance(action, LoadTlsKey):
            key = await trio.to_thread.run_sync(read_key, home_path, action.fingerprint)
            if key is not None and len(key) > KEY_BYTES_MAX:
                key = None
            await agent._events_send.send(TlsKeyLoaded(action.fingerprint, key))
        elif isinstance(action, StoreTlsKey):
            await trio.to_thread.run_sync(write_key, home_path, action.fingerprint, action.key)
            agent._emit_log("tls.key_stored", fingerprint=action.fingerprint)
        elif isinstance(action, DropTlsKeys):
            dropped = await trio.to_thread.run_sync(drop_keys, home_path, action.fingerprints)
            if dropped:
                agent._emit_log("tls.key_dropped", fingerprints=",".join(dropped))
    except OSError as exc:  # a full disk, EMFILE: the key arrives again when a peer is asked again
        log.warning("tls.file_failed error=%s", exc, extra={"event": "tls.file_failed", "fields": {"error": str(exc)}})


# ---- what HTTPS serves ---------------------------------------------------------------------------------


class TlsWatch:
    """The latest ServeTls from the core, and a way to wait for the next one."""

    def __init__(self) -> None:
        self.latest = ServeTls(None, b"", b"", NO_CERTIFICATE)  # until the core says otherwise
        self.serving: ServeTls | None = None  # what a running HTTPS server uses now
        self._changed = trio.Event()

    def update(self, action: ServeTls) -> None:
        self.latest = action
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, seen: ServeTls | None) -> ServeTls:
        """The latest value once it is not `seen`."""
        while self.latest is None or self.latest is seen:
            await self._changed.wait()
        return self.latest


def _write_run_files(home_path: Path, serving: ServeTls) -> tuple[str, str]:
    directory = Path(home_path) / RUN_DIR / HTTPS_RUN_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    cert, key = directory / "cert.pem", directory / "key.pem"
    write_atomic(cert, serving.chain_pem, 0o600)
    write_atomic(key, key_pem(serving.key), 0o600)
    return str(cert), str(key)


def _remove_run_files(home_path: Path) -> None:
    directory = Path(home_path) / RUN_DIR / HTTPS_RUN_DIR
    for name in ("key.pem", "cert.pem"):
        try:
            (directory / name).unlink()
        except OSError:
            pass


def _log(level: int, event: str, **fields: object) -> None:
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    log.log(level, "%s %s", event, text, extra={"event": event, "fields": fields})


def _where(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_https(agent, app, address: tuple[str, int]) -> None:
    """Serve `app` over TLS on `address` with what the core says (restarted on every change)."""
    from mesh.gateway.app import serve_http

    seen: ServeTls | None = None
    said = None
    try:
        while True:
            serving = await agent.tls.wait_changed(seen)
            seen = serving
            if serving.fingerprint is None:
                await trio.to_thread.run_sync(_remove_run_files, agent.home.path)
                if serving.reason == said or serving.reason in QUIET_REASONS:
                    continue
                with trio.move_on_after(HTTPS_WARN_GRACE_S):  # a fresh node learns the certificate,
                    await agent.tls.wait_changed(serving)  # or its key, within moments: no warning then
                    continue
                _log(logging.WARNING, "https.waiting", addr=_where(address), reason=f"{serving.reason}: serving HTTP only")
                said = serving.reason
                continue
            said = None
            await _serve_until_changed(agent, app, address, serving, serve_http)
    finally:
        agent.tls.serving = None
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove_run_files, agent.home.path)


async def _serve_until_changed(agent, app, address, serving: ServeTls, serve_http) -> None:
    """One HTTPS server with one certificate, until the core says something else."""
    while agent.tls.latest is serving:
        try:
            certfile, keyfile = await trio.to_thread.run_sync(_write_run_files, agent.home.path, serving)
            async with trio.open_nursery() as nursery:
                await nursery.start(_serve, serve_http, app, address, certfile, keyfile)
                agent.tls.serving = serving
                _log(logging.INFO, "https.serving", addr=_where(address), fingerprint=serving.fingerprint)
                await agent.tls.wait_changed(serving)
                nursery.cancel_scope.cancel()
            agent.tls.serving = None
            await trio.to_thread.run_sync(_remove_run_files, agent.home.path)  # the key leaves the disk with the server
            _log(logging.INFO, "https.stopped", addr=_where(address), fingerprint=serving.fingerprint)
            return
        except Exception as exc:  # the port is taken, the files cannot be written: try again later
            found = _os_error(exc)
            if found is None:
                raise
            exc = found
            agent.tls.serving = None
            _log(logging.ERROR, "https.failed", addr=_where(address), error=str(exc)[:200],
                 retry_s=HTTPS_RETRY_S)
            with trio.move_on_after(HTTPS_RETRY_S):
                await agent.tls.wait_changed(serving)


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError in `exc` or in the exception group it is (a nursery wraps what it raises)."""
    if isinstance(exc, OSError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _os_error(inner)
        if found is not None:
            return found
    return None


async def _serve(serve_http, app, address, certfile: str, keyfile: str, *, task_status=trio.TASK_STATUS_IGNORED):
    await serve_http(app, address, certfile=certfile, keyfile=keyfile, task_status=task_status)
