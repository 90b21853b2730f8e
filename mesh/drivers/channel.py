"""The secure channel: Noise XXpsk0 over any trio stream, authenticated by membership credentials.

Theory of operation:

- First the initiator sends a one-byte cipher offer (suites it accepts, and whether it prefers
  AES-GCM because its CPU has AES instructions); the responder answers with a one-byte choice:
  `Noise_XXpsk0_25519_AESGCM_SHA256` only when both ends prefer it, else
  `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s` (fast everywhere, including ARM boxes without AES
  instructions). Both bytes go into the Noise prologue (`PROLOGUE + offer + choice`), so an
  attacker who alters them makes the handshake fail: no downgrade (Noise spec, section 6).
- The handshake is then Noise XXpsk0 from the `noiseprotocol` package. Each side makes a fresh
  X25519 static key per connection. The pre-shared key is the mesh's (`channel_psk`: HKDF of the
  mesh key that invites carry), so message 1 already proves the initiator holds it: a stranger,
  or a node of another mesh, fails there and the responder closes having sent nothing but its
  cipher choice. No credential, name, role or mesh identity leaves a node before the other side
  has proved it holds the mesh key; the credential chains in messages 2 and 3 then prove
  membership itself (a revoked member still holds the key, and is refused there).
- Each side's handshake payload (responder: message 2, initiator: message 3, both encrypted) is
  CBOR `{"key": Ed25519 public key, "chain": credential chain, "sig": signature}`, where `sig` is
  the node key's Ed25519 signature over `STATIC_KEY_CONTEXT + noise static public key` (as
  libp2p-noise does). The signature binds the Noise session to the node key; the injected
  `authenticate(chain, key)` binds the node key to a valid, unrevoked membership of this mesh and
  returns the peer's `Member`.
- Once the responder has accepted message 3 it sends one empty transport record; the initiator
  waits for it, so `secure_connect` returning means both sides accepted. A responder that refuses
  the initiator's credential (after message 3: the initiator holds the mesh key) sends the reason
  in that record instead ("fleet key used up", "node revoked"), so a box can say why it is not let
  in; a stranger that failed message 1 gets nothing.
- Any failure (bad bytes, bad signature, refused credential, timeout, size) closes the transport
  before a single application byte is read and raises `HandshakeError` with a reason.
- After the handshake every record is a 2-byte big-endian length, then one Noise transport message
  (ciphertext with its 16-byte tag, at most 65535 bytes). A record that fails to decrypt or has an
  impossible length breaks the stream (`SecureChannelError`, also a `trio.BrokenResourceError`).
- Large records (both ends of a version that speaks them: a bit in the offer and the choice) are
  a 4-byte length and up to 1 MiB of plaintext under keys derived from the handshake. Both ends
  of this version also take head room (another offer bit, echoed in the choice as 0x80): up to
  `LARGE_RECORD_HEAD_ROOM_BYTES` more, so a 1 MiB chunk piece and its message head travel as one
  record (one read, one wake-up and one hand-off to the core at the receiver instead of two).
- Every handshake message travels in the same length-prefixed form.
"""

from __future__ import annotations

import functools
import logging
import operator
import platform
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from noise.connection import Keypair, NoiseConnection

from mesh.drivers.admission import PREAUTH_PER_SOURCE_MAX, PREAUTH_TOTAL_MAX, PreAuthGate
from mesh.errors import CredentialError, RemoteProtocolError
from mesh.ids import node_id_from_public_key, short
from mesh.state.membership import (
    CHAIN_BYTES_MAX,
    InviteLedger,
    Member,
    RevocationList,
    verify_chain,
)

log = logging.getLogger("mesh.channel")

NOISE_CHACHA = b"Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s"
NOISE_AESGCM = b"Noise_XXpsk0_25519_AESGCM_SHA256"
SUITES = (NOISE_CHACHA, NOISE_AESGCM)  # bit i of an offer byte = SUITES[i] is acceptable
PREFERS_AES_BIT = 0x80  # in the offer: the initiator has AES instructions and prefers AES-GCM
LARGE_RECORDS_BIT = 0x40  # in the offer: "I speak large records"; in the choice: "we both do"
HEAD_ROOM_BIT = 0x20  # in the offer: "I take large records with head room" (older nodes ignore it)
HEAD_ROOM_CHOSEN_BIT = 0x80  # in the choice: "we both do" (0x20 would be part of the suite index)
SUITE_MASK = 0x3F  # the choice byte's suite index
PROLOGUE = b"assetmesh/channel/v2"
STATIC_KEY_CONTEXT = b"assetmesh/channel/v1/noise-static-key\x00"
PSK_CONTEXT = b"assetmesh/channel/v2/psk"  # HKDF info for the mesh's pre-shared key
PSK_BYTES = 32

LENGTH_PREFIX_BYTES = 2
TAG_BYTES = 16
NOISE_MESSAGE_BYTES_MAX = 65535  # Noise spec section 3: a message is at most 65535 bytes
RECORD_PLAINTEXT_BYTES_MAX = NOISE_MESSAGE_BYTES_MAX - TAG_BYTES
HANDSHAKE_PAYLOAD_BYTES_MAX = CHAIN_BYTES_MAX + 256  # {key, chain, sig} around a chain
DH_BYTES = 32  # an X25519 public key
MESSAGE_1_BYTES = DH_BYTES + TAG_BYTES  # e, and the empty payload's tag (under the psk)
# XX message sizes: 1 = e; 2 = e, encrypted s, encrypted payload; 3 = encrypted s and payload
MESSAGE_2_BYTES_MAX = DH_BYTES + 2 * TAG_BYTES + DH_BYTES + HANDSHAKE_PAYLOAD_BYTES_MAX
MESSAGE_3_BYTES_MAX = 2 * TAG_BYTES + DH_BYTES + HANDSHAKE_PAYLOAD_BYTES_MAX
HANDSHAKE_TIMEOUT_S_DEFAULT = 10.0
REFUSAL_BYTES_MAX = 256  # the reason a refused member-to-be is told
SEND_BATCH_BYTES_MAX = 4 * 65537  # small records joined into one transport write
LARGE_PREFIX_BYTES = 4  # large records: a 4-byte length
LARGE_RECORD_PLAINTEXT_BYTES_MAX = 1024 * 1024  # a whole chunk piece is one record
LARGE_RECORD_HEAD_ROOM_BYTES = 4096  # with head room: a piece's message head rides in its record too
RECORD_PLAINTEXT_BYTES_MAX_ANY = LARGE_RECORD_PLAINTEXT_BYTES_MAX + LARGE_RECORD_HEAD_ROOM_BYTES
LARGE_RECORD_CONTEXT = b"assetmesh/channel/v3/records"  # HKDF info for the large-record keys
DIRECT_READ_BYTES_MIN = 64 * 1024  # a record's remainder at least this large is read straight into place
NONCE_MAX = 2**64 - 1
RECEIVE_BYTES_MAX = 256 * 1024  # bytes asked of the transport per read; bounds buffered plaintext
ED25519_SIGNATURE_BYTES = 64
ED25519_PUBLIC_KEY_BYTES = 32

# (credential chain, node public key) -> the peer's Member; raises CredentialError to refuse
Authenticate = Callable[[bytes, bytes], Member]


class HandshakeError(RemoteProtocolError):
    """The peer failed the secure-channel handshake; the connection has been closed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"secure handshake failed: {reason}")
        self.reason = reason


class SecureChannelError(RemoteProtocolError, trio.BrokenResourceError):
    """The peer sent a record that is malformed or fails authentication; the stream is broken."""


@dataclass(frozen=True)
class LocalIdentity:
    """What this node proves about itself in a handshake."""

    node_key: Ed25519PrivateKey  # the node's long-term Ed25519 identity key
    chain: bytes  # its membership credential chain, as `mesh.state.membership` encodes it
    psk: bytes  # the mesh's pre-shared key (`channel_psk`): proves the mesh key before any credential


def channel_psk(authority_public_key: bytes, mesh_key: bytes | None) -> bytes:
    """The mesh's Noise pre-shared key: HKDF-SHA256 of the mesh key (32 random bytes made by `mesh
    init`, carried by every invite), bound to the mesh authority. A mesh made before mesh keys
    existed has none on any of its homes; it derives the key from the authority public key, which
    strangers do not see either (chains never leave a node before this key is proved)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    secret = mesh_key if mesh_key is not None else authority_public_key
    return HKDF(hashes.SHA256(), PSK_BYTES, salt=bytes(authority_public_key), info=PSK_CONTEXT).derive(secret)


def membership_authenticator(
    authority_public_key: bytes,
    revocations: RevocationList | None = None,
    invite_ledger: InviteLedger | None = None,
    clock: Callable[[], float] = time.time,
) -> Authenticate:
    """The production `authenticate`: `verify_chain` against this mesh, now, with the live
    revocation list and invite ledger (both read at each handshake, so later additions count)."""

    def authenticate(chain: bytes, node_public_key: bytes) -> Member:
        return verify_chain(
            chain,
            authority_public_key,
            clock(),
            revocations=revocations,
            invite_ledger=invite_ledger,
            expected_node_public_key=node_public_key,
        )

    return authenticate


# ---- cipher choice ---------------------------------------------------------------------------


@functools.cache
def cpu_has_fast_aes() -> bool:
    """Whether this CPU has AES instructions (x86 AES-NI, ARMv8 crypto extensions)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: every x86-64 Mac/PC of the last decade and Apple silicon do
        return platform.machine().lower() in {"x86_64", "amd64", "arm64"}
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in {"flags", "Features"} and "aes" in value.split():
            return True
    return False


def default_ciphers() -> tuple[bytes, ...]:
    """Both suites, AES-GCM first only where this CPU has AES instructions."""
    return (NOISE_AESGCM, NOISE_CHACHA) if cpu_has_fast_aes() else (NOISE_CHACHA, NOISE_AESGCM)


def _offer_byte(ciphers: Sequence[bytes], large_records: bool, head_room: bool) -> int:
    """The initiator's offer: which suites it accepts, whether it prefers AES-GCM, and whether
    it speaks large records and their head room (every node of this version does; older ones
    never set the bits)."""
    offer = sum(1 << SUITES.index(name) for name in set(ciphers))
    offer |= PREFERS_AES_BIT if ciphers[0] == NOISE_AESGCM else 0
    if large_records:
        offer |= LARGE_RECORDS_BIT | (HEAD_ROOM_BIT if head_room else 0)
    return offer


def _choice_byte(suite: bytes, offer: int, large_records: bool, head_room: bool) -> int:
    """The responder's choice: the suite's index, and the record features both ends speak."""
    choice = SUITES.index(suite)
    if large_records and offer & LARGE_RECORDS_BIT:
        choice |= LARGE_RECORDS_BIT | (HEAD_ROOM_CHOSEN_BIT if head_room and offer & HEAD_ROOM_BIT else 0)
    return choice


def _choice_allowed(offer: int) -> int:
    """The bits a choice may set in answer to `offer`."""
    allowed = SUITE_MASK | (offer & LARGE_RECORDS_BIT)
    return allowed | (HEAD_ROOM_CHOSEN_BIT if offer & LARGE_RECORDS_BIT and offer & HEAD_ROOM_BIT else 0)


def _records(choice: int) -> tuple[bool, bool]:
    """(large records, head room) as the choice settled them."""
    large = bool(choice & LARGE_RECORDS_BIT)
    return large, large and bool(choice & HEAD_ROOM_CHOSEN_BIT)


def _choose_suite(offer: int, ciphers: Sequence[bytes]) -> bytes:
    """The responder's choice: AES-GCM only if both ends prefer it, else ChaChaPoly if common."""
    common = [name for name in ciphers if offer & (1 << SUITES.index(name))]
    if not common:
        raise HandshakeError(f"no cipher suite in common (offer {offer:#04x})")
    if NOISE_AESGCM in common and offer & PREFERS_AES_BIT and ciphers[0] == NOISE_AESGCM:
        return NOISE_AESGCM
    return NOISE_CHACHA if NOISE_CHACHA in common else common[0]


def _check_ciphers(ciphers: Sequence[bytes]) -> None:
    if not ciphers or any(name not in SUITES for name in ciphers):
        raise ValueError(f"ciphers must be a non-empty sequence drawn from {SUITES}")


# ---- handshake -------------------------------------------------------------------------------


def _new_noise(initiator: bool, protocol_name: bytes, prologue: bytes, psk: bytes) -> NoiseConnection:
    """A Noise XXpsk0 state with a fresh static key, ready to start."""
    if len(psk) != PSK_BYTES:
        raise ValueError(f"the pre-shared key must have {PSK_BYTES} bytes")
    noise = NoiseConnection.from_name(protocol_name)
    noise.set_psks(psk)
    if initiator:
        noise.set_as_initiator()
    else:
        noise.set_as_responder()
    static = X25519PrivateKey.generate()
    raw = static.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    noise.set_keypair_from_private_bytes(Keypair.STATIC, raw)
    noise.set_prologue(prologue)
    noise.start_handshake()
    return noise


def _static_public_key(noise: NoiseConnection) -> bytes:
    """Our own Noise static public key."""
    return noise.noise_protocol.keypairs["s"].public_bytes


def _identity_payload(local: LocalIdentity, static_public_key: bytes) -> bytes:
    """The CBOR payload proving our node key and membership, bound to this Noise session."""
    key = local.node_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = local.node_key.sign(STATIC_KEY_CONTEXT + static_public_key)
    return cbor2.dumps({"key": key, "chain": local.chain, "sig": sig}, canonical=True)


def _reject_tag(*_args: object) -> object:
    raise ValueError("CBOR tags are not allowed here")


_NO_TAGS = {tag: _reject_tag for tag in range(1024)} | {55799: _reject_tag}


def _decode_payload(payload: bytes) -> object:
    """Plain CBOR values only: no tags, no nesting, no indefinite lengths."""
    return cbor2.loads(
        payload,
        tag_hook=_reject_tag,
        semantic_decoders=_NO_TAGS,
        max_depth=2,
        allow_indefinite=False,
        allow_duplicate_keys=False,
    )


def _parse_identity_payload(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """(node public key, chain, signature) from the peer's payload; HandshakeError if malformed."""
    if len(payload) > HANDSHAKE_PAYLOAD_BYTES_MAX:
        raise HandshakeError("identity payload too large")
    try:
        doc = _decode_payload(payload)
    except Exception:  # cbor2 raises many types on hostile input
        raise HandshakeError("identity payload is not CBOR") from None
    if not isinstance(doc, dict) or set(doc) != {"key", "chain", "sig"}:
        raise HandshakeError("identity payload has the wrong fields")
    key, chain, sig = doc["key"], doc["chain"], doc["sig"]
    if not all(isinstance(value, bytes) for value in (key, chain, sig)):
        raise HandshakeError("identity payload fields must be bytes")
    if len(key) != ED25519_PUBLIC_KEY_BYTES or len(sig) != ED25519_SIGNATURE_BYTES:
        raise HandshakeError("identity payload key or signature has the wrong size")
    if len(chain) > CHAIN_BYTES_MAX:
        raise HandshakeError("credential chain too large")
    return key, chain, sig


def _check_identity(
    payload: bytes, remote_static: bytes, authenticate: Authenticate
) -> tuple[Member, bytes]:
    """Verify the peer's payload against its Noise static key; return (member, node public key)."""
    key, chain, sig = _parse_identity_payload(payload)
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(sig, STATIC_KEY_CONTEXT + remote_static)
    except (InvalidSignature, ValueError):
        raise HandshakeError("static-key signature does not verify") from None
    try:
        member = authenticate(chain, key)
    except CredentialError as exc:
        raise HandshakeError(f"credential refused: {exc}") from None
    if member.node_id != node_id_from_public_key(key):
        raise HandshakeError("credential names another node")
    return member, key


async def _send_message(stream: trio.abc.Stream, message: bytes) -> None:
    """Write one length-prefixed handshake message."""
    await stream.send_all(len(message).to_bytes(LENGTH_PREFIX_BYTES, "big") + message)


async def _receive_exactly(stream: trio.abc.Stream, count: int, on_eof: str) -> bytes:
    """Read exactly `count` bytes; HandshakeError(on_eof) if the stream ends first."""
    buffer = bytearray()
    while len(buffer) < count:
        data = await stream.receive_some(count - len(buffer))
        if not data:
            raise HandshakeError(on_eof)
        buffer += data
    return bytes(buffer)


async def _receive_message(
    stream: trio.abc.Stream, on_eof: str, what: str, bytes_min: int, bytes_max: int
) -> bytes:
    """Read one length-prefixed handshake message (never a byte past it); check its length
    before reading the body, so garbage is refused at once."""
    header = await _receive_exactly(stream, LENGTH_PREFIX_BYTES, on_eof)
    length = int.from_bytes(header, "big")
    if not bytes_min <= length <= bytes_max:
        expected = bytes_min if bytes_min == bytes_max else f"{bytes_min}..{bytes_max}"
        raise HandshakeError(f"{what} has {length} bytes, expected {expected}")
    return await _receive_exactly(stream, length, on_eof)


def _noise_step(step: Callable[[], Any], what: str) -> Any:
    """Run one noiseprotocol call on remote bytes, turning its failures into HandshakeError."""
    try:
        return step()
    except Exception as exc:  # noiseprotocol and cryptography raise assorted types on bad input
        raise HandshakeError(f"{what}: {type(exc).__name__}") from None


def _read_identity_message(
    noise: NoiseConnection, message: bytes, what: str, authenticate: Authenticate
) -> tuple[Member, bytes]:
    """Process a handshake message carrying the peer's `s` and identity; check both."""
    state = noise.noise_protocol.handshake_state  # the last read_message drops it; keep `rs`
    payload = _noise_step(lambda: bytes(noise.read_message(message)), what)
    return _check_identity(payload, state.rs.public_bytes, authenticate)


async def _initiator_handshake(
    stream: trio.abc.Stream,
    local: LocalIdentity,
    authenticate: Authenticate,
    ciphers: Sequence[bytes],
    large_records: bool,
    head_room: bool,
) -> tuple[NoiseConnection, Member, bytes, int]:
    """-> offer; <- choice; -> e; <- e, ee, s, es + responder identity;
    -> s, se + our identity; <- accepted. Returns the choice byte last."""
    offer = _offer_byte(ciphers, large_records, head_room)
    await _send_message(stream, bytes([offer]))
    choice = (await _receive_message(stream, "the peer closed the connection", "choice", 1, 1))[0]
    suite = choice & SUITE_MASK
    if not (suite < len(SUITES) and SUITES[suite] in ciphers) or choice & ~_choice_allowed(offer):
        raise HandshakeError(f"the peer chose suite {choice}, which we did not offer")
    noise = _new_noise(True, SUITES[suite], PROLOGUE + bytes([offer, choice]), local.psk)
    await _send_message(stream, bytes(noise.write_message()))
    message = await _receive_message(
        stream, "the peer closed the connection", "handshake message 2", 1, MESSAGE_2_BYTES_MAX
    )
    member, key = _read_identity_message(noise, message, "bad handshake message 2", authenticate)
    mine = _identity_payload(local, _static_public_key(noise))
    await _send_message(stream, bytes(noise.write_message(mine)))
    message = await _receive_message(
        stream, "the peer refused us (closed after message 3)", "acceptance", TAG_BYTES, TAG_BYTES + REFUSAL_BYTES_MAX
    )
    refusal = bytes(_noise_step(lambda: noise.decrypt(message), "bad acceptance record"))
    if refusal:
        raise HandshakeError(f"the peer refused us: {refusal.decode('utf-8', 'replace')}")
    return noise, member, key, choice


async def _responder_handshake(
    stream: trio.abc.Stream,
    candidates: Sequence[tuple[LocalIdentity, Authenticate]],
    ciphers: Sequence[bytes],
    large_records: bool,
    head_room: bool,
) -> tuple[NoiseConnection, Member, bytes, int, int]:
    """<- offer; -> choice; <- e; -> e, ee, s, es + our identity;
    <- s, se + initiator identity; -> accepted. Message 1 selects the candidate (the mesh) whose
    key it was made with; the last items returned are the choice byte and its index."""
    message = await _receive_message(stream, "the peer closed the connection", "cipher offer", 1, 1)
    offer = message[0]
    suite = _choose_suite(offer, ciphers)
    choice = _choice_byte(suite, offer, large_records, head_room)
    await _send_message(stream, bytes([choice]))
    message = await _receive_message(
        stream, "the peer closed the connection", "handshake message 1", MESSAGE_1_BYTES, MESSAGE_1_BYTES
    )
    # Only a holder of a mesh key gets past here; anyone else has had nothing but the choice byte.
    noise, index = _select_mesh(suite, PROLOGUE + bytes([offer, choice]), message, candidates)
    local, authenticate = candidates[index]
    mine = _identity_payload(local, _static_public_key(noise))
    await _send_message(stream, bytes(noise.write_message(mine)))
    message = await _receive_message(
        stream, "the peer closed after message 2", "handshake message 3", 1, MESSAGE_3_BYTES_MAX
    )
    try:
        member, key = _read_identity_message(noise, message, "bad handshake message 3", authenticate)
    except HandshakeError as exc:
        if noise.handshake_finished:  # it holds the mesh key: tell it why (it can do nothing with it)
            with trio.move_on_after(1):
                try:
                    await _send_message(stream, noise.encrypt(exc.reason.encode()[:REFUSAL_BYTES_MAX]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # it hung up first
        raise
    await _send_message(stream, noise.encrypt(b""))
    return noise, member, key, choice, index


def _select_mesh(suite: bytes, prologue: bytes, message: bytes,
                 candidates: Sequence[tuple[LocalIdentity, Authenticate]]) -> tuple[NoiseConnection, int]:
    """The Noise state (and candidate index) whose pre-shared key message 1 was made with. Every
    candidate is tried, so how long a refusal takes says nothing about which meshes are served
    (message 1 costs no Diffie-Hellman: a hash and an AEAD open per candidate)."""
    found: tuple[NoiseConnection, int] | None = None
    for index, (local, _) in enumerate(candidates):
        noise = _new_noise(False, suite, prologue, local.psk)
        try:
            noise.read_message(message)
        except Exception:  # noiseprotocol and cryptography raise assorted types on a wrong key
            continue
        if found is None:
            found = (noise, index)
    if found is None:
        raise HandshakeError("not this mesh: message 1 fails the mesh key (or was altered on the way)")
    return found


async def _secure(
    stream: trio.abc.Stream,
    candidates: Sequence[tuple[LocalIdentity, Authenticate]],
    handshake_timeout_s: float,
    initiator: bool,
    ciphers: Sequence[bytes] | None,
    large_records: bool = True,
    head_room: bool = True,
) -> tuple[int, SecureStream]:
    """Run one side of the handshake under a deadline; close the transport on any failure. An
    initiator has one candidate; a responder selects one by message 1 (its index is returned)."""
    local, authenticate = candidates[0]
    try:
        ciphers = tuple(ciphers) if ciphers is not None else default_ciphers()
        _check_ciphers(ciphers)
        with trio.fail_after(handshake_timeout_s):
            if initiator:
                noise, member, key, choice = await _initiator_handshake(
                    stream, local, authenticate, ciphers, large_records, head_room)
                index = 0
            else:
                noise, member, key, choice, index = await _responder_handshake(
                    stream, candidates, ciphers, large_records, head_room)
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise HandshakeError(f"no handshake within {handshake_timeout_s} s") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await trio.aclose_forcefully(stream)
        raise HandshakeError("connection lost during handshake") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    large, room = _records(choice)
    return index, SecureStream(stream, noise, member, key, large_records=large, head_room=room)


async def secure_connect(
    stream: trio.abc.Stream,
    local: LocalIdentity,
    authenticate: Authenticate,
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S_DEFAULT,
    *,
    ciphers: Sequence[bytes] | None = None,
    large_records: bool = True,
    head_room: bool = True,
) -> SecureStream:
    """Handshake as the initiator over `stream`; the peer's `Member` is on the result.

    `ciphers`: the Noise protocol names we accept, preferred first (default `default_ciphers()`).
    `large_records=False` behaves as a node older than large records, `head_room=False` as one
    older than their head room (tests, benchmarks).
    """
    return (await _secure(stream, [(local, authenticate)], handshake_timeout_s, True, ciphers,
                          large_records, head_room))[1]


async def secure_accept(
    stream: trio.abc.Stream,
    local: LocalIdentity,
    authenticate: Authenticate,
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S_DEFAULT,
    *,
    ciphers: Sequence[bytes] | None = None,
    large_records: bool = True,
    head_room: bool = True,
) -> SecureStream:
    """Handshake as the responder over `stream`; the peer's `Member` is on the result."""
    return (await _secure(stream, [(local, authenticate)], handshake_timeout_s, False, ciphers,
                          large_records, head_room))[1]


async def secure_accept_any(
    stream: trio.abc.Stream,
    candidates: Sequence[tuple[LocalIdentity, Authenticate]],
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S_DEFAULT,
    *,
    ciphers: Sequence[bytes] | None = None,
    large_records: bool = True,
    head_room: bool = True,
) -> tuple[int, SecureStream]:
    """Handshake as the responder of several meshes on one listener (a co-op hub): message 1
    selects the mesh whose key made it, each candidate being (our identity in that mesh, its
    `authenticate`); returns (the candidate's index, the stream). A stranger, or a node of a mesh
    not served here, learns nothing of which meshes are: it fails at message 1 exactly as with one
    mesh, after every candidate was tried. Credentials and refusals are then those of the selected
    mesh only."""
    if not candidates:
        raise ValueError("no mesh to accept for")
    return await _secure(stream, candidates, handshake_timeout_s, False, ciphers, large_records, head_room)


# ---- transport -------------------------------------------------------------------------------


class _Busy:
    """Raises trio.BusyResourceError when two tasks use one direction of a stream at once."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(f"another task is already {self._what} on this stream")
        self._held = True

    def __exit__(self, *exc_info: object) -> None:
        self._held = False


class _LargeRecords:
    """One direction's large-record AEAD: the Noise suite's cipher (AES-256-GCM or
    ChaCha20-Poly1305 from `cryptography`) under a key derived with HKDF-SHA256 from that
    direction's Noise transport key and the handshake hash, a 96-bit nonce of 32 zero bits and a
    64-bit counter (as Noise's), no associated data. Only the record size differs from Noise's
    transport messages; the keys are separate, so no nonce is used twice under one key."""

    def __init__(self, noise: NoiseConnection, sending: bool) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        protocol = noise.noise_protocol
        state = protocol.cipher_state_encrypt if sending else protocol.cipher_state_decrypt
        key = HKDF(hashes.SHA256(), 32, salt=bytes(noise.get_handshake_hash()),
                   info=LARGE_RECORD_CONTEXT).derive(bytes(state.k))
        aead = AESGCM if noise.protocol_name == NOISE_AESGCM else ChaCha20Poly1305
        self._aead = aead(key)
        self._counter = 0

    def _nonce(self) -> bytes:
        if self._counter >= NONCE_MAX:
            raise SecureChannelError("record counter exhausted")
        nonce = b"\0\0\0\0" + self._counter.to_bytes(8, "big")
        self._counter += 1
        return nonce

    def seal(self, piece: memoryview, into: bytearray | None = None) -> bytearray | memoryview:
        """The record for `piece`: its 4-byte length, then the ciphertext and tag, in one buffer
        (a new one, or the front of `into`, which the caller reuses once the record is sent)."""
        length = len(piece) + TAG_BYTES
        size = LARGE_PREFIX_BYTES + length
        record = bytearray(size) if into is None else memoryview(into)[:size]
        record[:LARGE_PREFIX_BYTES] = length.to_bytes(LARGE_PREFIX_BYTES, "big")
        self._aead.encrypt_into(self._nonce(), piece, None, memoryview(record)[LARGE_PREFIX_BYTES:])
        return record

    def open(self, sealed: memoryview) -> bytes:
        return self._aead.decrypt(self._nonce(), sealed, None)


class SecureStream(trio.abc.Stream):
    """An authenticated, encrypted `trio.abc.Stream` to one mesh member (no half-close).

    Records: with `large_records`, a 4-byte length and one AEAD record of up to 1 MiB of
    plaintext (with `head_room`, both ends of this version: 1 MiB + 4 KiB, so a chunk piece and
    its message head are one record) under keys derived from the Noise handshake, so a chunk
    piece is sealed and opened in one call; otherwise Noise transport messages (2-byte length,
    at most 65519 bytes of plaintext each). `record_plaintext_bytes_max` says how much one
    `send_all` may hold to arrive as one record."""

    def __init__(
        self, transport: trio.abc.Stream, noise: NoiseConnection, peer: Member, peer_key: bytes,
        large_records: bool = False,
        head_room: bool = False,
    ) -> None:
        self.transport = transport  # the underlying byte stream (TCP)
        self.peer = peer  # the authenticated peer's membership
        self.peer_public_key = peer_key  # the peer's raw Ed25519 node public key
        self.protocol_name: bytes = noise.protocol_name  # the Noise protocol (cipher suite) in use
        self.large_records = large_records
        self.head_room = large_records and head_room
        if large_records:
            self._prefix = LARGE_PREFIX_BYTES
            self._plain_max = LARGE_RECORD_PLAINTEXT_BYTES_MAX + (LARGE_RECORD_HEAD_ROOM_BYTES if head_room else 0)
            self._sealer = _LargeRecords(noise, sending=True)
            self._opener = _LargeRecords(noise, sending=False)
            self._seal_one = self._sealer.seal
            self._decrypt_one = self._opener.open
        else:
            self._prefix = LENGTH_PREFIX_BYTES
            self._plain_max = RECORD_PLAINTEXT_BYTES_MAX
            self._encrypt = noise.noise_protocol.cipher_state_encrypt.encrypt_with_ad
            self._decrypt = noise.noise_protocol.cipher_state_decrypt.decrypt_with_ad
            self._seal_one = self._seal_noise
            self._decrypt_one = functools.partial(self._decrypt, None)
        self._record_bytes_max = self._plain_max + TAG_BYTES
        # Large records are sealed into, and read into, one buffer each that lives as long as the
        # stream (made at the first one): a fresh 1 MiB per record cost its zeroing and ~250 page
        # faults (bench/datapath_bench.py: an edge's faults fell from ~60,000 to ~12,000).
        self._send_record: bytearray | None = None
        self._receive_record: bytearray | None = None
        self._low_water = 1  # the socket's SO_RCVLOWAT as we last set it
        self._direct = isinstance(transport, trio.SocketStream)  # large remainders read into place
        self._send_busy = _Busy("sending")
        self._receive_busy = _Busy("receiving")
        self._rx = bytearray()  # transport bytes not yet forming a whole record
        self._plain: deque[bytes] = deque()  # decrypted records not yet (fully) returned
        self._plain_start = 0  # bytes of the first record already returned
        self._eof = False
        self._closed = False
        self._send_broken = False
        self._receive_broken = False

    @property
    def record_plaintext_bytes_max(self) -> int:
        """The most plaintext one record carries on this stream."""
        return self._plain_max

    # -- sending --

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send all of `data` (in records of at most 1 MiB, or 65519 bytes with an
        older peer)."""
        await self.send_parts((data,))

    async def send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send the concatenation of `parts` without joining them first (each part is sealed on
        its own: a chunk's frame head and its bytes straight from the read buffer)."""
        with self._send_busy:
            self._check_can_send()
            await trio.lowlevel.checkpoint_if_cancelled()
            views = [view for view in (memoryview(part).cast("B") for part in parts) if view]
            if not views:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            self._send_broken = True  # until every record we encrypted is on the wire
            try:
                for write in self._seal(views):
                    await self.transport.send_all(write)
            except trio.ClosedResourceError:
                self._closed = True
                raise
            self._send_broken = False

    def _seal(self, views: list[memoryview]) -> Any:
        """Yield transport writes holding `views` as records: small records joined into writes
        of up to SEND_BATCH_BYTES_MAX, large ones written as they are."""
        batch: list[bytes | bytearray] = []
        size = 0
        for view in views:
            for start in range(0, len(view), self._plain_max):
                piece = view[start : start + self._plain_max]
                if self.large_records and LARGE_PREFIX_BYTES + len(piece) + TAG_BYTES >= SEND_BATCH_BYTES_MAX:
                    if batch:
                        yield b"".join(batch)
                        batch, size = [], 0
                    yield self._sealer.seal(piece, self._send_buffer())  # sent before the next is sealed
                    continue
                record = self._seal_one(piece)
                if len(record) >= SEND_BATCH_BYTES_MAX:
                    if batch:
                        yield b"".join(batch)
                        batch, size = [], 0
                    yield record
                    continue
                batch.append(record)
                size += len(record)
                if size >= SEND_BATCH_BYTES_MAX:
                    yield b"".join(batch)
                    batch, size = [], 0
        if batch:
            yield b"".join(batch)

    def _send_buffer(self) -> bytearray:
        if self._send_record is None:
            self._send_record = bytearray(LARGE_PREFIX_BYTES + self._record_bytes_max)
        return self._send_record

    def _seal_noise(self, piece: memoryview) -> bytes:
        """A Noise transport message with its 2-byte length."""
        sealed = self._encrypt(None, piece)
        return len(sealed).to_bytes(LENGTH_PREFIX_BYTES, "big") + sealed

    async def wait_send_all_might_not_block(self) -> None:
        """Block until the transport would accept more bytes."""
        with self._send_busy:
            self._check_can_send()
            await self.transport.wait_send_all_might_not_block()

    def _check_can_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this secure stream was closed")
        if self._send_broken:
            raise trio.BrokenResourceError("an earlier send failed part way; the stream is broken")

    # -- receiving --

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Return decrypted bytes (at most `max_bytes`), or b"" once the peer closed cleanly."""
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        with self._receive_busy:
            self._check_can_receive()
            if self._plain or self._eof:
                await trio.lowlevel.checkpoint()
            while not self._plain and not self._eof:
                try:
                    await self._fill()
                except SecureChannelError:
                    await trio.aclose_forcefully(self.transport)  # no more bytes from this peer
                    raise
            return self._take(max_bytes)

    async def _fill(self) -> None:
        """Read from the transport once and decrypt every whole record that arrived."""
        if self._direct and len(self._rx) >= self._prefix:
            length = self._record_length(self._rx)
            if self._prefix + length - len(self._rx) >= DIRECT_READ_BYTES_MIN:
                await self._read_record_into_place(length)
                return
        try:
            data = await self.transport.receive_some(RECEIVE_BYTES_MAX)
        except trio.ClosedResourceError:
            self._closed = True
            raise
        if not data:
            if self._rx:
                self._break("connection closed in the middle of a record")
            self._eof = True
            return
        view = memoryview(data)
        if self._rx:
            view = self._complete_partial(view)
        if not self._rx:  # records are opened straight from `data`; only a tail is copied
            used = self._open_records(view)
            self._rx += view[used:]

    async def _read_record_into_place(self, length: int) -> None:
        """The rest of a large record, read from the socket straight into its own buffer (no
        copy out of a read buffer; the buffer is the stream's, reused), then opened. Reads
        nothing past the record."""
        if self._receive_record is None:
            self._receive_record = bytearray(self._record_bytes_max)
        view = memoryview(self._receive_record)[:length]
        have = len(self._rx) - self._prefix
        view[:have] = memoryview(self._rx)[self._prefix:]
        self._rx = bytearray()
        sock = self.transport.socket  # type: ignore[attr-defined]
        try:
            while have < length:
                self._set_low_water(sock, length - have)  # wake once the whole record is in
                got = await sock.recv_into(view[have:])
                if not got:
                    self._break("connection closed in the middle of a record")
                have += got
        except (OSError, trio.ClosedResourceError) as exc:
            self._closed = self._closed or isinstance(exc, trio.ClosedResourceError)
            raise trio.BrokenResourceError(f"reading a record: {exc}") from exc
        finally:
            self._set_low_water(sock, 1)
        self._open_one(view)

    def _set_low_water(self, sock: trio.socket.SocketType, count: int) -> None:
        """`_set_receive_low_water`, skipped when the socket already has that value."""
        if count != self._low_water:
            _set_receive_low_water(sock, count)
            self._low_water = count

    def _complete_partial(self, view: memoryview) -> memoryview:
        """Move bytes from `view` into the partial record; open it once whole. Returns the rest."""
        rx, prefix = self._rx, self._prefix
        if len(rx) < prefix:
            take = prefix - len(rx)
            rx += view[:take]
            view = view[take:]
            if len(rx) < prefix:
                return view
        length = self._record_length(rx)
        need = prefix + length - len(rx)
        rx += view[:need]
        if len(rx) == prefix + length:
            self._open_one(memoryview(rx)[prefix:])
            rx.clear()
        return view[need:]

    def _open_records(self, view: memoryview) -> int:
        """Decrypt the whole records at the front of `view`; return how many bytes they took."""
        pos, end, prefix = 0, len(view), self._prefix
        while end - pos >= prefix:
            length = self._record_length(view[pos : pos + prefix])
            start = pos + prefix
            if end - start < length:
                break
            self._open_one(view[start : start + length])
            pos = start + length
        return pos

    def _record_length(self, header: bytes | bytearray | memoryview) -> int:
        """A record's ciphertext length from its prefix; breaks the stream if impossible."""
        length = int.from_bytes(header[: self._prefix], "big")
        if length < TAG_BYTES:
            self._break(f"record length {length} is shorter than a tag")
        if length > self._record_bytes_max:
            self._break(f"record length {length} exceeds {self._record_bytes_max}")
        return length

    def _open_one(self, sealed: memoryview) -> None:
        """Decrypt one record into the plaintext queue; breaks the stream if it fails."""
        try:
            plain = self._decrypt_one(sealed)
        except Exception:  # cryptography InvalidTag, or nonce exhaustion
            self._break("record failed authentication")
        if plain:
            self._plain.append(plain)

    def _take(self, max_bytes: int | None) -> bytes:
        """Pop up to `max_bytes` (None: RECEIVE_BYTES_MAX, or a whole large record) of buffered
        plaintext (b"" at EOF). Whole records that fit are joined into one result: a reader
        that handles each read as one event then handles many small messages at once."""
        plain = self._plain
        if not plain:
            return b""
        limit = (self._plain_max if self.large_records else RECEIVE_BYTES_MAX) if max_bytes is None else max_bytes
        head, start = plain[0], self._plain_start
        end = min(len(head), start + limit)
        if end < len(head):
            self._plain_start = end  # copy only what is returned: small reads stay linear
            return head[start:end]
        plain.popleft()
        self._plain_start = 0
        first = head if start == 0 else head[start:]
        if not plain or len(first) + len(plain[0]) > limit:
            return first
        parts, size = [first], len(first)
        while plain and size + len(plain[0]) <= limit:
            record = plain.popleft()
            parts.append(record)
            size += len(record)
        return b"".join(parts)

    def _break(self, reason: str) -> None:
        self._receive_broken = True
        self._send_broken = True
        self._rx = bytearray()  # a fresh one: the old may still be viewed by the caller
        self._plain.clear()
        raise SecureChannelError(f"peer {short(self.peer.node_id)}: {reason}")

    def _check_can_receive(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this secure stream was closed")
        if self._receive_broken:
            raise trio.BrokenResourceError("the peer sent a bad record; the stream is broken")

    # -- closing --

    async def aclose(self) -> None:
        """Close the transport; the peer sees EOF."""
        self._closed = True
        self._plain.clear()
        await self.transport.aclose()


def _set_receive_low_water(sock: trio.socket.SocketType, count: int) -> None:
    """Wake this socket's reader only once `count` bytes have arrived (SO_RCVLOWAT; Linux's
    epoll honours it for TCP). On a capped link a 1 MiB record otherwise arrives as a wake-up,
    a read and a trio reschedule per few kilobytes; the time spent waiting is not free."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, count)
    except OSError:  # not TCP, or already closed: reads just wake more often
        pass


# ---- serving ---------------------------------------------------------------------------------


async def _serve_one(
    stream: trio.abc.Stream,
    local: LocalIdentity,
    authenticate: Authenticate,
    handler: Callable[[SecureStream], Awaitable[None]],
    handshake_timeout_s: float,
    ciphers: Sequence[bytes] | None,
    gate: PreAuthGate,
    logger: logging.Logger,
) -> None:
    """Handshake one accepted connection, then run `handler`; raises nothing but Cancelled."""
    addr = _peer_addr(stream)
    secure = None
    with trio.CancelScope() as scope:
        for shed in gate.admit(scope, addr.rsplit(":", 1)[0]):
            shed.cancel()  # the oldest unproven connections make room (mesh.drivers.admission)
        try:
            secure = await secure_accept(stream, local, authenticate, handshake_timeout_s, ciphers=ciphers)
        except HandshakeError as exc:
            logger.info("peer.refused reason=%r addr=%s", exc.reason, addr)
        except Exception:  # a bug (in `authenticate`, say) must not stop the listener
            logger.exception("peer.handshake_failed addr=%s", addr)
        finally:
            gate.done(scope)
    if secure is None:
        if scope.cancelled_caught:
            logger.info("peer.shed reason=%r addr=%s", "too many unproven connections", addr)
        await trio.aclose_forcefully(stream)
        return
    logger.info(
        "peer.accepted node=%s role=%s addr=%s", secure.peer.node_id, secure.peer.role.value, addr
    )
    await _run_handler(handler, secure, addr, logger)


async def _run_handler(
    handler: Callable[[SecureStream], Awaitable[None]],
    secure: SecureStream,
    addr: str,
    logger: logging.Logger,
) -> None:
    """Run `handler`, log how it ended, and close the stream."""
    try:
        await handler(secure)
    except Exception as exc:
        logger.warning(
            "peer.session_failed node=%s addr=%s error=%r", secure.peer.node_id, addr, exc
        )
    finally:
        await trio.aclose_forcefully(secure)


def _peer_addr(stream: trio.abc.Stream) -> str:
    """host:port of a socket stream's peer, or "?"."""
    try:
        host, port = stream.socket.getpeername()[:2]  # type: ignore[attr-defined]
    except Exception:
        return "?"
    return f"{host}:{port}"


async def serve_secure(
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    local: LocalIdentity,
    authenticate: Authenticate,
    handler: Callable[[SecureStream], Awaitable[None]],
    *,
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S_DEFAULT,
    preauth_total_max: int = PREAUTH_TOTAL_MAX,
    preauth_per_source_max: int = PREAUTH_PER_SOURCE_MAX,
    ciphers: Sequence[bytes] | None = None,
    logger: logging.Logger = log,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept forever: handshake each connection, log refusals, run `handler` for members."""
    gate = PreAuthGate(preauth_total_max, preauth_per_source_max)

    async def serve(stream: trio.abc.Stream) -> None:
        await _serve_one(
            stream, local, authenticate, handler, handshake_timeout_s, ciphers, gate, logger
        )

    await trio.serve_listeners(serve, listeners, task_status=task_status)
