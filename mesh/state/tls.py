"""The event's TLS certificate: organizer-signed statements in the shared state.

Theory of operation:
- `mesh tls set` signs a statement {kind "tls", mesh, publisher, at, certs, fingerprint}: the
  certificate chain (DER, leaf first) and the leaf's SHA-256 fingerprint. `mesh tls rm` signs one
  with no certs that names the fingerprint it removes. Both are signed like releases and policies:
  Ed25519 by the organizer's node key over `assetmesh/v1/tls\\x00` + the canonical CBOR body, in a
  blob [publisher's credential chain, [body, signature]], verified on read at the statement's own
  time (the publisher an organizer then, and not revoked at or before it).
- The state keeps each blob under its id (base32 BLAKE3 of the body, as releases); an entry under
  another key is ignored. In force is the valid statement with the greatest (at, id); a removal in
  force means the mesh has no certificate. Replicas that merged the same entries agree.
- The private key never enters a statement or the state. It lives in the homes that hold it
  (mesh.drivers.tls) and travels over the secure channel (mesh.core.tls); `key_matches` is how
  every receiver checks that a key belongs to the certificate before keeping it.
- Pure code: time arrives as `now`. A bad statement of any shape becomes CredentialError; bad
  input files (`load_pem_chain`, `load_pem_key`, `check_certificate`) become UsageError.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import math
from dataclasses import dataclass

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mesh.errors import CredentialError, UsageError
from mesh.ids import mesh_id_from_authority_key, public_key_from_node_id
from mesh.state.document import MeshState
from mesh.state.membership import (
    CHAIN_BYTES_MAX,
    CLOCK_SKEW_S,
    TIME_S_MAX,
    RevocationList,
    Role,
    _cbor_loads,
    _check_authority_key,
    _check_now,
    verify_chain,
)
from mesh.state.releases import _check_signer, _node_id_problem, state_revocations, statement_id

TLS_STATEMENTS_KEY = "tls_statements"  # late root map of the shared state: statement id -> blob
CERTS_MAX = 4  # certificates in a chain: leaf and intermediates (the root stays in the trust store)
CERT_BYTES_MAX = 8 * 1024  # one DER certificate; real ones are 1-2 KiB
KEY_BYTES_MAX = 16 * 1024  # one PKCS#8 DER private key (RSA-4096 is about 2.4 KiB)
PEM_BYTES_MAX = 64 * 1024  # a --cert or --key file
STATEMENT_BYTES_MAX = CERTS_MAX * CERT_BYTES_MAX + 1024  # one body
BLOB_BYTES_MAX = CHAIN_BYTES_MAX + STATEMENT_BYTES_MAX + 128
STATEMENTS_READ_MAX = 256  # entries of the statement map a reader considers
FINGERPRINT_CHARS = 64  # lower-case hex of SHA-256
STATEMENT_STEP_S = 0.001  # a new statement is dated at least this much after the latest one
NAMES_MAX = 100  # subject names shown and matched per certificate
RSA_BITS_MIN = 2048

_PREFIX = b"assetmesh/v1/tls\x00"
_FIELDS = frozenset({"kind", "mesh", "publisher", "at", "certs", "fingerprint"})
_SIGNATURE_BYTES = 64
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class TlsCertificate:
    """The event's certificate as a verified statement carries it."""

    id: str  # id of the statement that set it
    fingerprint: str  # lower-case hex SHA-256 of the leaf's DER
    certs: tuple[bytes, ...]  # DER, leaf first
    names: tuple[str, ...]  # the leaf's DNS and IP subject alternative names, lower case
    not_before: float  # unix seconds
    not_after: float  # unix seconds
    publisher: str  # node id of the organizer that signed it
    at: float  # when it was signed

    def chain_pem(self) -> bytes:
        """The chain as PEM, leaf first (a server's certfile)."""
        return b"".join(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
                        for der in self.certs)

    def covers(self, host: str) -> bool:
        """Whether a browser that asked for `host` accepts this certificate's names (RFC 6125:
        exact, or a wildcard standing for exactly one leftmost label)."""
        host = host.strip().lower().rstrip(".").strip("[]")
        if _is_ip(host):
            return str(ipaddress.ip_address(host)) in self.names
        for name in self.names:
            if name == host:
                return True
            if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
                return True
        return False


@dataclass(frozen=True)
class TlsStatement:
    """A verified statement: a certificate set (certificate not None) or removed."""

    id: str  # base32 BLAKE3 of the signed body
    at: float  # unix seconds when it was signed; the greatest (at, id) is in force
    fingerprint: str | None  # the certificate it sets or removes (None: a removal of whatever was set)
    certificate: TlsCertificate | None  # the certificate it sets; None for a removal
    publisher: str  # node id of the organizer that signed it


# --- certificates and keys --------------------------------------------------------------------


def fingerprint_of(der: bytes) -> str:
    """Lower-case hex SHA-256 of a DER certificate (what browsers show as its fingerprint)."""
    return hashlib.sha256(der).hexdigest()


def chain_fingerprint(certs: list[x509.Certificate]) -> str:
    """The fingerprint of a loaded chain's leaf."""
    return fingerprint_of(certs[0].public_bytes(serialization.Encoding.DER))


def is_fingerprint(text: object) -> bool:
    return isinstance(text, str) and len(text) == FINGERPRINT_CHARS and set(text) <= _HEX


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _names(leaf: x509.Certificate) -> tuple[str, ...]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return ()
    dns = [name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)]
    ips = [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    return tuple(dict.fromkeys(dns + ips))[:NAMES_MAX]


def _time(value: datetime.datetime) -> float:
    return value.replace(tzinfo=datetime.timezone.utc).timestamp() if value.tzinfo is None else value.timestamp()


def _validity(cert: x509.Certificate) -> tuple[float, float]:
    return _time(cert.not_valid_before_utc), _time(cert.not_valid_after_utc)


def load_pem_chain(data: bytes, what: str = "--cert") -> list[x509.Certificate]:
    """The certificates of a PEM file, leaf first, each issued by the next; UsageError otherwise."""
    if len(data) > PEM_BYTES_MAX:
        raise UsageError(f"{what}: larger than {PEM_BYTES_MAX} bytes: not a certificate chain")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise UsageError(f"{what}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)") from None
    if len(certs) > CERTS_MAX:
        raise UsageError(f"{what}: {len(certs)} certificates; give the leaf and its intermediates, at most {CERTS_MAX}")
    for index, cert in enumerate(certs):
        if len(cert.public_bytes(serialization.Encoding.DER)) > CERT_BYTES_MAX:
            raise UsageError(f"{what}: certificate {index + 1} is larger than {CERT_BYTES_MAX} bytes")
    for index, (cert, issuer) in enumerate(zip(certs, certs[1:])):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise UsageError(f"{what}: certificate {index + 1} is not issued by certificate {index + 2}: "
                             "put the leaf first, then its intermediates in order") from None
    return certs


def load_pem_key(data: bytes, what: str = "--key"):
    """The private key of a PEM file (unencrypted; RSA or EC); UsageError otherwise."""
    if len(data) > PEM_BYTES_MAX:
        raise UsageError(f"{what}: larger than {PEM_BYTES_MAX} bytes: not a private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(f"{what}: the key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(f"{what}: not a PEM private key (expected -----BEGIN PRIVATE KEY-----)") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise UsageError(f"{what}: browsers accept RSA and ECDSA certificates only; this key is {type(key).__name__}")
    return key


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(cert: x509.Certificate, key) -> bool:
    """Whether `key` is the private half of the certificate's public key."""
    return _public_der(key.public_key()) == _public_der(cert.public_key())


def key_der(key) -> bytes:
    """A private key as unencrypted PKCS#8 DER (how it travels between members)."""
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_pem(der: bytes) -> bytes:
    """PKCS#8 DER -> PKCS#8 PEM (how it is stored, and what a TLS server loads)."""
    key = serialization.load_der_private_key(der, password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def der_key_matches(certificate: TlsCertificate, der: bytes) -> bool:
    """Whether untrusted PKCS#8 DER bytes are the certificate's private key (False on any junk)."""
    if not isinstance(der, bytes) or not 0 < len(der) <= KEY_BYTES_MAX:
        return False
    try:
        key = serialization.load_der_private_key(der, password=None)
        leaf = x509.load_der_x509_certificate(certificate.certs[0])
        return isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) and key_matches(leaf, key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def check_certificate(certs: list[x509.Certificate], key, now: float, window_s: float) -> list[str]:
    """Refuse (UsageError) a chain and key a TLS server cannot use now; warnings (lines) for what
    may still go wrong: expiry within `window_s` (the event), a leaf not valid yet."""
    leaf = certs[0]
    if not key_matches(leaf, key):
        raise UsageError("--key does not match --cert: its public key is not the certificate's "
                         "(the key of another certificate?)")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < RSA_BITS_MIN:
        raise UsageError(f"--key: an RSA key of {key.key_size} bits; browsers want at least {RSA_BITS_MIN}")
    not_before, not_after = _validity(leaf)
    if not_after <= now:
        raise UsageError(f"--cert expired on {_date(not_after)}: make a new one (docs/operations.md, HTTPS)")
    if not _names(leaf):
        raise UsageError("--cert names no host (no subjectAltName DNS or IP entry): browsers refuse it")
    warnings = []
    for index, cert in enumerate(certs[1:], start=2):
        if _validity(cert)[1] <= now:
            raise UsageError(f"--cert: certificate {index} (an intermediate) expired on {_date(_validity(cert)[1])}")
    if not_before > now + CLOCK_SKEW_S:
        warnings.append(f"the certificate is valid only from {_date(not_before)}: browsers refuse it until then")
    if not_after <= now + window_s:
        warnings.append(f"the certificate expires on {_date(not_after)}, within the event window "
                        f"({window_s / 86400:g} days): renew it before then")
    return warnings


def _date(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def describe(certs: tuple[bytes, ...]) -> tuple[tuple[str, ...], float, float]:
    """(names, not_before, not_after) of a DER chain's leaf; CredentialError if it is not one."""
    try:
        leaf = x509.load_der_x509_certificate(certs[0])
        for der in certs[1:]:
            x509.load_der_x509_certificate(der)
        not_before, not_after = _validity(leaf)
    except (ValueError, TypeError, IndexError):
        raise CredentialError("malformed tls: not DER certificates") from None
    return _names(leaf), not_before, not_after


# --- statements ---------------------------------------------------------------------------------


def _sign(key: Ed25519PrivateKey, chain: bytes, body: dict) -> tuple[str, bytes]:
    body_bytes = cbor2.dumps(body, canonical=True)
    if len(body_bytes) > STATEMENT_BYTES_MAX:
        raise UsageError(f"the certificate chain is too large for a statement ({len(body_bytes)} bytes)")
    blob = cbor2.dumps([bytes(chain), [body_bytes, key.sign(_PREFIX + body_bytes)]], canonical=True)
    return statement_id(body_bytes), blob


def _statement(authority_public_key: bytes, key: Ed25519PrivateKey, chain: bytes, at: float,
               certs: list[bytes], fingerprint: str | None, doing: str) -> tuple[str, bytes]:
    authority = _check_authority_key(authority_public_key)
    at = _check_now(at)
    publisher = _check_signer(authority, key, chain, at, doing)
    body = {"kind": "tls", "mesh": mesh_id_from_authority_key(authority), "publisher": publisher, "at": at,
            "certs": certs, "fingerprint": fingerprint}
    return _sign(key, chain, body)


def create_tls_statement(authority_public_key: bytes, organizer_key: Ed25519PrivateKey, organizer_chain: bytes,
                         certs: list[x509.Certificate], at: float) -> tuple[str, bytes]:
    """(id, blob) making `certs` (leaf first) the event's certificate, signed by an organizer."""
    ders = [cert.public_bytes(serialization.Encoding.DER) for cert in certs]
    return _statement(authority_public_key, organizer_key, organizer_chain, at, ders, chain_fingerprint(certs),
                      "set the event's TLS certificate")


def create_tls_removal(authority_public_key: bytes, organizer_key: Ed25519PrivateKey, organizer_chain: bytes,
                       fingerprint: str | None, at: float) -> tuple[str, bytes]:
    """(id, blob) removing the event's certificate (`fingerprint`: the one in force, for the record)."""
    return _statement(authority_public_key, organizer_key, organizer_chain, at, [], fingerprint,
                      "remove the event's TLS certificate")


def _open(blob: object, mesh_id: str) -> tuple[bytes, dict, bytes, bytes]:
    """(chain, body, body bytes, signature) of a blob of the right shape, kind and mesh."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) > BLOB_BYTES_MAX:
        raise CredentialError(f"malformed tls: not bytes of at most {BLOB_BYTES_MAX}")
    outer = _cbor_loads(bytes(blob), "tls")
    if not (isinstance(outer, list) and len(outer) == 2 and isinstance(outer[0], bytes)
            and isinstance(outer[1], list) and len(outer[1]) == 2):
        raise CredentialError("malformed tls: expected [publisher chain, [body, signature]]")
    body_bytes, signature = outer[1]
    if not (isinstance(body_bytes, bytes) and isinstance(signature, bytes)) or len(signature) != _SIGNATURE_BYTES:
        raise CredentialError("malformed tls: a statement is [body, signature]")
    if len(body_bytes) > STATEMENT_BYTES_MAX:
        raise CredentialError("malformed tls: oversized body")
    body = _cbor_loads(body_bytes, "tls")
    if not isinstance(body, dict) or body.keys() != _FIELDS or body.get("kind") != "tls":
        raise CredentialError("malformed tls: unexpected or missing fields")
    if body["mesh"] != mesh_id:
        raise CredentialError("tls belongs to another mesh")
    return outer[0], body, body_bytes, signature


def _check_body(body: dict, now: float) -> float:
    """The statement's time, once its fields are well-formed; CredentialError otherwise."""
    at, certs, fingerprint = body["at"], body["certs"], body["fingerprint"]
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not (math.isfinite(at) and 0 <= at <= TIME_S_MAX):
        raise CredentialError("malformed tls: at is not a time")
    if at > now + CLOCK_SKEW_S:
        raise CredentialError("tls dated in the future")
    if not isinstance(certs, list) or len(certs) > CERTS_MAX or not all(
            isinstance(der, bytes) and 0 < len(der) <= CERT_BYTES_MAX for der in certs):
        raise CredentialError(f"malformed tls: certs is a list of at most {CERTS_MAX} DER certificates")
    if fingerprint is not None and not is_fingerprint(fingerprint):
        raise CredentialError("malformed tls: fingerprint is not a SHA-256 in hex")
    if certs and fingerprint != fingerprint_of(certs[0]):
        raise CredentialError("malformed tls: fingerprint is not the leaf's")
    return float(at)


def _check_publisher(chain: bytes, body: dict, body_bytes: bytes, signature: bytes, authority: bytes, at: float,
                     revocations: RevocationList | None) -> None:
    """The chain proves the publisher an organizer at `at`, unrevoked then, and it signed."""
    publisher = body["publisher"]
    problem = _node_id_problem(publisher)
    if problem:
        raise CredentialError(f"malformed tls: {problem}")
    public_key = public_key_from_node_id(publisher)
    try:
        member = verify_chain(chain, authority, at, expected_node_public_key=public_key)
    except CredentialError as exc:
        raise CredentialError(f"tls publisher's credential is invalid: {exc}") from None
    if member.role is not Role.ORGANIZER:
        raise CredentialError("only organizers may sign a tls statement")
    revocation = revocations.revocation_of(publisher) if revocations is not None else None
    if revocation is not None and at >= revocation.at:
        raise CredentialError("tls signed after its publisher was revoked")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, _PREFIX + body_bytes)
    except (InvalidSignature, ValueError):
        raise CredentialError("bad signature on tls") from None


def verify_tls_statement(blob: bytes, authority_public_key: bytes, now: float,
                         revocations: RevocationList | None = None) -> TlsStatement:
    """The statement a blob proves, or CredentialError (whatever the input)."""
    authority = _check_authority_key(authority_public_key)
    now = _check_now(now)
    chain, body, body_bytes, signature = _open(blob, mesh_id_from_authority_key(authority))
    at = _check_body(body, now)
    _check_publisher(chain, body, body_bytes, signature, authority, at, revocations)
    statement_id_ = statement_id(body_bytes)
    certificate = None
    if body["certs"]:
        certs = tuple(body["certs"])
        names, not_before, not_after = describe(certs)
        certificate = TlsCertificate(id=statement_id_, fingerprint=body["fingerprint"], certs=certs, names=names,
                                     not_before=not_before, not_after=not_after, publisher=body["publisher"], at=at)
    return TlsStatement(id=statement_id_, at=at, fingerprint=body["fingerprint"], certificate=certificate,
                        publisher=body["publisher"])


# --- the shared state ---------------------------------------------------------------------------


def put_tls_statement(state: MeshState, made: tuple[str, bytes]) -> str:
    """Store a statement made by `create_tls_statement` or `create_tls_removal`; returns its id."""
    statement_id_, blob = made
    state._put_late_bytes(TLS_STATEMENTS_KEY, statement_id_, blob)
    return statement_id_


def tls_statement_ids(state: MeshState) -> tuple[str, ...]:
    """The keys of the statement map, sorted (a cheap test of whether it changed)."""
    return tuple(sorted(state._keys(state._root_map(TLS_STATEMENTS_KEY))))


class TlsBook:
    """The verified TLS statements of one state at one time."""

    def __init__(self, state: MeshState, authority_public_key: bytes, now: float) -> None:
        revocations = state_revocations(state, authority_public_key, now)
        blobs = sorted(state._bytes_map(TLS_STATEMENTS_KEY).items())[:STATEMENTS_READ_MAX]
        self.statements: list[TlsStatement] = []
        for key, blob in blobs:
            try:
                found = verify_tls_statement(blob, authority_public_key, now, revocations)
            except CredentialError:
                continue
            if found.id == key:
                self.statements.append(found)
        self.statements.sort(key=lambda s: (s.at, s.id), reverse=True)

    @property
    def latest(self) -> TlsStatement | None:
        """The statement in force (a setting or a removal), or None if there is none."""
        return self.statements[0] if self.statements else None

    @property
    def current(self) -> TlsCertificate | None:
        """The event's certificate, or None (never set, or removed)."""
        return self.latest.certificate if self.latest is not None else None

    def fingerprints(self) -> frozenset[str]:
        """Every certificate a valid statement names (set or removed): keys of those no longer in
        force are deleted by the nodes that hold them."""
        return frozenset(s.fingerprint for s in self.statements if s.fingerprint is not None)

    def next_at(self, now: float) -> float:
        """The time a new statement takes: now, or just after the latest one (so it wins)."""
        latest = max((s.at for s in self.statements), default=0.0)
        return max(float(now), latest + STATEMENT_STEP_S)


def current_certificate(state: MeshState, authority_public_key: bytes, now: float) -> TlsCertificate | None:
    """The event's certificate in force in `state`, or None."""
    return TlsBook(state, authority_public_key, now).current
