"""Pairing: a fresh box with no key is admitted by the short code it shows (SPAKE2).

A box whose home is empty and that has no fleet key waits to be admitted: `mesh up` makes its node
key, shows a code such as `4H7-K2Q` on its console (and in `mesh id --json`), and accepts pairing
connections only, on its listen port. An organizer runs `mesh admit 4H7-K2Q --addr BOX:7450 --role
edge --name door-2`; the two run SPAKE2 (the `spake2` package) with the code as the password, so
the exchange is authenticated by the code alone and an attacker on the LAN gets one guess per
connection, never an offline one:

    admitter -> box   PAIR_MAGIC, SPAKE2 message A
    box -> admitter   SPAKE2 message B
    admitter -> box   confirm_A = HMAC(K, "admitter" + transcript)     (the box counts a wrong one)
    box -> admitter   confirm_B = HMAC(K, "box" + transcript)          (the admitter checks the box)
    admitter -> box   seal(K_token, a fresh single-use invite token for this box)
    box -> admitter   seal(K_reply, the box's node id)                 (then the box joins with the token)

Every message is length-prefixed (2 bytes) and bounded. A code is 6 Crockford base32 characters
(30 bits), shown as XXX-XXX; it expires after PAIR_CODE_S, and after PAIR_TRIES_MAX wrong tries
the box makes a new one (and says so), so guessing it online is hopeless. Nothing about the mesh
crosses before the code is proved: the token is sealed with a key derived from the SPAKE2 key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mesh.errors import MeshError, RemoteProtocolError, UsageError

log = logging.getLogger("mesh.pairing")

PAIR_MAGIC = b"assetmesh/pair/v1\n"
CODE_CHARS = 6
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
PAIR_TRIES_MAX = 5  # wrong codes before the box makes a new one
PAIR_CODE_S = 15 * 60.0  # a code is good this long
PAIR_TIMEOUT_S = 15.0  # one pairing exchange, end to end
MESSAGE_BYTES_MAX = 8192  # a sealed token is ~1 KB
_IDS = (b"assetmesh-admitter", b"assetmesh-box")
_NONCE = bytes(12)  # each derived key seals one message


def log_event(logger: logging.Logger, level: int, event: str, **fields: object) -> None:
    """A structured log event, as the agent logs them (`event k=v` as text; fields in JSON)."""
    text = " ".join(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in fields.items())
    logger.log(level, "%s %s", event, text, extra={"event": event, "fields": fields})


class PairingError(MeshError):
    """The pairing did not happen; the message says why (wrong code, timeout, ...)."""


def new_code() -> str:
    """A fresh code: CODE_CHARS random Crockford characters."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_CHARS))


def format_code(code: str) -> str:
    """'4H7K2Q' -> '4H7-K2Q' (what the box shows)."""
    half = len(code) // 2
    return f"{code[:half]}-{code[half:]}"


def normalize_code(text: str) -> str:
    """What a person typed -> the code: case, spaces and dashes ignored, O read as 0, I and L as 1."""
    raw = "".join(ch for ch in text.upper() if ch not in " -_").translate(str.maketrans("OIL", "011"))
    if len(raw) != CODE_CHARS or any(ch not in CODE_ALPHABET for ch in raw):
        raise UsageError(f"{text!r} is not a pairing code: the box shows {CODE_CHARS} letters and digits "
                         "like 4H7-K2Q")
    return raw


def _keys(shared: bytes, transcript: bytes) -> dict[str, bytes]:
    derive = {}
    for name in ("confirm", "token", "reply"):
        derive[name] = HKDF(hashes.SHA256(), 32, salt=hashlib.sha256(transcript).digest(),
                            info=b"assetmesh/pair/v1/" + name.encode()).derive(shared)
    return derive


def _confirm(keys: dict[str, bytes], who: bytes, transcript: bytes) -> bytes:
    return hmac.new(keys["confirm"], who + transcript, hashlib.sha256).digest()


async def _send(stream: trio.abc.Stream, data: bytes) -> None:
    await stream.send_all(len(data).to_bytes(2, "big") + data)


async def _receive(stream: trio.abc.Stream, buffer: bytearray) -> bytes:
    """One length-prefixed message (RemoteProtocolError if the peer closes or sends too much)."""
    while True:
        if len(buffer) >= 2:
            size = int.from_bytes(buffer[:2], "big")
            if size > MESSAGE_BYTES_MAX:
                raise RemoteProtocolError(f"pairing message of {size} bytes")
            if len(buffer) >= 2 + size:
                data = bytes(buffer[2:2 + size])
                del buffer[:2 + size]
                return data
        more = await stream.receive_some(MESSAGE_BYTES_MAX)
        if not more:
            raise RemoteProtocolError("the other side closed the connection")
        buffer += more


async def admit(stream: trio.abc.Stream, code: str, make_token: Callable[[], str]) -> str:
    """The organizer's side over `stream`: prove the code, send a token made by `make_token`,
    return the box's node id. PairingError if the code is wrong or the box misbehaves."""
    from spake2 import SPAKE2_A

    with trio.fail_after(PAIR_TIMEOUT_S):
        spake = SPAKE2_A(code.encode(), idA=_IDS[0], idB=_IDS[1])
        ours = spake.start()
        await stream.send_all(PAIR_MAGIC)
        await _send(stream, ours)
        buffer = bytearray()
        theirs = await _receive(stream, buffer)
        try:
            keys = _keys(spake.finish(theirs), ours + theirs)
        except Exception:  # spake2 raises assorted errors on a bad message
            raise PairingError("the box sent a bad pairing message") from None
        await _send(stream, _confirm(keys, b"admitter", ours + theirs))
        try:
            confirm = await _receive(stream, buffer)
        except RemoteProtocolError:
            raise PairingError("the box refused the code: check it (the box shows it on its console and in "
                               "`mesh id`) and try again; after a few wrong tries it shows a new one") from None
        if not hmac.compare_digest(confirm, _confirm(keys, b"box", ours + theirs)):
            raise PairingError("that box does not know this code (not the box you meant?)")
        await _send(stream, ChaCha20Poly1305(keys["token"]).encrypt(_NONCE, make_token().encode(), b"token"))
        reply = await _receive(stream, buffer)
        try:
            return ChaCha20Poly1305(keys["reply"]).decrypt(_NONCE, reply, b"reply").decode()
        except Exception:
            raise PairingError("the box's answer does not verify") from None


ADMIT_TOKEN_S = 600.0  # the single-use invite a paired box gets is good this long


def admission_token(home, role: str, name: str | None, hints: list[tuple[str, int]], now: float) -> str:
    """The single-use invite an organizer's home gives a box it admits (with its hints, the mesh
    key and the event's name)."""
    from mesh.state import membership

    info = home.info
    return membership.create_invite(info.authority_public_key, home.node_key(), info.chain, membership.Role(role),
                                    name, now + ADMIT_TOKEN_S, hints[: membership.HINTS_MAX], now,
                                    mesh_key=info.mesh_key, mesh_name=info.mesh_name)


async def admit_at(address: tuple[str, int], code: str, make_token: Callable[[], str]) -> str:
    """Connect to a waiting box and `admit` it; its node id. PairingError says why not."""
    host, port = address
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise PairingError(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
    try:
        return await admit(stream, code, make_token)
    except trio.TooSlowError:
        raise PairingError(f"{host}:{port} did not answer in time (is it the waiting box's listen port?)") from None
    except (trio.BrokenResourceError, RemoteProtocolError) as exc:
        raise PairingError(f"{host}:{port}: {exc} (is it a box waiting to be admitted?)") from None
    finally:
        await stream.aclose()


@dataclass
class WaitingBox:
    """A fresh box's side: its current code, its wrong tries, the token once admitted."""

    node_id: str  # the node id it will have (its key is made before it waits)
    on_code: Callable[[str, str], None]  # (code, why) -> shows a new code on the console and in pending.json
    clock: Callable[[], float] = trio.current_time
    code: str = field(default_factory=new_code)
    wrong: int = 0  # wrong codes since this one was made
    made_at: float | None = None
    token: str | None = None  # set once admitted
    _lock: trio.Lock = field(default_factory=trio.Lock)

    def renew(self, why: str) -> None:
        self.code, self.wrong, self.made_at = new_code(), 0, self.clock()
        self.on_code(self.code, why)

    def check_expiry(self) -> None:
        if self.made_at is None:
            self.made_at = self.clock()
            self.on_code(self.code, "new")
        elif self.clock() - self.made_at > PAIR_CODE_S:
            self.renew("expired")

    async def handle(self, stream: trio.abc.Stream, addr: str) -> None:
        """One pairing connection at a time: another one meanwhile is closed at once (an organizer
        retries; connections never pile up holding file descriptors)."""
        from spake2 import SPAKE2_B

        if self._lock.locked():
            log_event(log, logging.INFO, "pair.refused", addr=addr, reason="busy with another pairing")
            await trio.aclose_forcefully(stream)
            return
        async with self._lock:
            if self.token is not None:
                return
            self.check_expiry()
            try:
                with trio.fail_after(PAIR_TIMEOUT_S):
                    magic = b""
                    while len(magic) < len(PAIR_MAGIC):
                        more = await stream.receive_some(len(PAIR_MAGIC) - len(magic))
                        if not more:
                            return
                        magic += more
                    if magic != PAIR_MAGIC:
                        log_event(log, logging.INFO, "pair.refused", addr=addr, reason="not a pairing connection")
                        return
                    buffer = bytearray()
                    theirs = await _receive(stream, buffer)
                    spake = SPAKE2_B(self.code.encode(), idA=_IDS[0], idB=_IDS[1])
                    ours = spake.start()
                    await _send(stream, ours)
                    try:
                        keys = _keys(spake.finish(theirs), theirs + ours)
                    except Exception:
                        raise RemoteProtocolError("bad SPAKE2 message") from None
                    confirm = await _receive(stream, buffer)
                    if not hmac.compare_digest(confirm, _confirm(keys, b"admitter", theirs + ours)):
                        self._wrong_code(addr)
                        return
                    await _send(stream, _confirm(keys, b"box", theirs + ours))
                    sealed = await _receive(stream, buffer)
                    try:
                        token = ChaCha20Poly1305(keys["token"]).decrypt(_NONCE, sealed, b"token").decode()
                    except Exception:
                        raise RemoteProtocolError("the sealed token does not verify") from None
                    await _send(stream, ChaCha20Poly1305(keys["reply"]).encrypt(_NONCE, self.node_id.encode(), b"reply"))
                    self.token = token
            except (RemoteProtocolError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log_event(log, logging.INFO, "pair.refused", addr=addr, reason=str(exc) or type(exc).__name__)
            finally:
                await trio.aclose_forcefully(stream)

    def _wrong_code(self, addr: str) -> None:
        self.wrong += 1
        log_event(log, logging.WARNING, "pair.wrong_code", addr=addr, tries=self.wrong, of=PAIR_TRIES_MAX)
        if self.wrong >= PAIR_TRIES_MAX:
            self.renew(f"{PAIR_TRIES_MAX} wrong tries")


async def wait_to_be_admitted(box: WaitingBox, listen: tuple[str, int]) -> str:
    """Serve pairing connections on `listen` until an organizer admits this box; the token."""
    from mesh.drivers.tcp import TcpTransport

    async def handle(stream: trio.abc.Stream, remote: tuple[str, int] | None) -> None:
        await box.handle(stream, f"{remote[0]}:{remote[1]}" if remote else "-")

    async with trio.open_nursery() as nursery:
        await nursery.start(TcpTransport().serve, listen, handle)
        while box.token is None:
            box.check_expiry()
            await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    return box.token


def write_pending(home_path: Path, node_id: str, code: str) -> None:
    """What `mesh id --json` shows on a waiting box."""
    import json

    from mesh.drivers.home import write_atomic

    home_path.mkdir(parents=True, exist_ok=True)
    doc = {"node_id": node_id, "state": "pending", "code": format_code(code)}
    write_atomic(home_path / PENDING_FILE, json.dumps(doc).encode(), 0o600)


def read_pending(home_path: Path) -> dict | None:
    import json

    try:
        doc = json.loads((home_path / PENDING_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


PENDING_FILE = "pending.json"
