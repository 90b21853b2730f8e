"""The event's TLS key inside `NodeCore`: which certificate is in force, whether this node holds its
key, and handing the key to the members that serve HTTPS, over the secure channel.

Theory of operation:
- The certificate in force is the newest valid organizer-signed statement in the shared state
  (mesh.state.tls); it is re-read when the statements or the revocations change. The private key
  is never in the state: the driver says whether this home holds it (LoadTlsKey -> TlsKeyLoaded),
  and a key is kept only if it matches the certificate.
- A node that serves HTTPS (`want_tls_key`) and lacks the key asks every ready peer that speaks
  FEATURE_TLS_KEY for it by fingerprint (TlsKeyRequest), and again every TLS_KEY_ASK_S while it
  lacks it (a peer may receive it meanwhile). Nodes that serve no HTTPS never ask and never keep
  a key: it goes only where it is needed.
- A holder answers (TlsKey) a peer only if the handshake authenticated it as a member whose role
  is in TLS_KEY_ROLES and it is not revoked, only once this node has settled (caught up with its
  peers' state, so a revocation it has not seen yet cannot let the key out: a request that
  arrives before is answered then), and at most once per session and certificate. Otherwise it
  stays silent. The channel is already encrypted and bound
  to that member's credential: there is no other sealing.
- A receiver keeps a key only for the certificate it asked about and only if the key matches it
  (StoreTlsKey); a key for the right fingerprint that does not match closes the session. A key for
  another fingerprint (the certificate changed meanwhile) or unasked for is dropped silently.
- When the certificate in force changes, the keys of certificates the state names but no longer
  uses are deleted (DropTlsKeys), and ServeTls tells the driver what HTTPS serves: the chain and
  key, or nothing and why.
"""

from __future__ import annotations

from mesh.core.events import DropTlsKeys, LoadTlsKey, ServeTls, StoreTlsKey, TlsKeyLoaded
from mesh.core.session import Session
from mesh.errors import RemoteProtocolError
from mesh.state.membership import Role
from mesh.state.tls import TlsBook, TlsCertificate, der_key_matches, tls_statement_ids
from mesh.wire import messages as m

FEATURE_TLS_KEY = "tls-key/1"  # a peer listing this in its Hello understands TlsKeyRequest and TlsKey
TLS_KEY_ROLES = frozenset({Role.ORGANIZER, Role.HUB, Role.EDGE})  # who may receive the key
TLS_KEY_ASK_S = 5.0  # while the key is missing, peers are asked again this often

NO_CERTIFICATE = "the mesh has no TLS certificate (an organizer runs `mesh tls set`)"
WAITING_FOR_KEY = "waiting for the certificate's key from a peer (an organizer's node or an edge that holds it)"
LOADING_KEY = "looking for the certificate's key in this home"


class TlsKeys:
    """The TLS half of `NodeCore` (a mixin: it uses the core's sessions, state, revocations,
    `_send`, `_emit`, `_settling`). Attributes are set up by `_init_tls`."""

    def _init_tls(self, want_tls_key: bool) -> None:
        self.want_tls_key = want_tls_key  # this node serves HTTPS: it asks peers for a missing key
        self.tls_certificate: TlsCertificate | None = None  # the certificate in force
        self.tls_key: bytes | None = None  # its key (PKCS#8 DER), if this node holds it
        self._tls_read: tuple | None = None  # (statement ids, revocations seen) last read
        self._tls_loaded = False  # the driver answered LoadTlsKey for the certificate in force
        self._tls_ask_at = float("inf")  # when to ask peers for the key next
        self._tls_served: tuple = (None, NO_CERTIFICATE)  # (fingerprint, reason) the driver was told (it
        # starts from "no certificate": a mesh without one asks nothing of the driver)
        self._tls_deferred: dict[int, bytes] = {}  # conn id -> fingerprint asked while we were settling

    # ---- what the driver and the gateway read --------------------------------------------------

    def _tls_status(self) -> dict | None:
        cert = self.tls_certificate
        if cert is None:
            return None
        return {"fingerprint": cert.fingerprint, "names": list(cert.names), "not_after": cert.not_after,
                "key_held": self.tls_key is not None}

    # ---- the certificate in force ----------------------------------------------------------------

    def _refresh_tls(self, now: float) -> None:
        """Re-read the certificate statements when they (or the revocations) changed."""
        read = (tls_statement_ids(self.state), len(self._revocations_seen))
        if read == self._tls_read:
            return
        self._tls_read = read
        book = TlsBook(self.state, self.identity.authority_public_key, now)
        current = book.current
        kept = current.fingerprint if current is not None else None
        old = self.tls_certificate.fingerprint if self.tls_certificate is not None else None
        if kept == old:
            return
        self.tls_certificate, self.tls_key, self._tls_loaded = current, None, False
        self._tls_ask_at = float("inf")
        dropped = tuple(sorted(book.fingerprints() - {kept}))
        if dropped:
            self._actions.append(DropTlsKeys(dropped))
        if current is None:
            self._emit("tls.removed", fingerprint=old)
        else:
            self._emit("tls.certificate", fingerprint=current.fingerprint, names=",".join(current.names),
                       not_after=round(current.not_after))
            self._actions.append(LoadTlsKey(current.fingerprint))
        self._serve_tls()

    def _on_tls_key_loaded(self, event: TlsKeyLoaded, now: float) -> None:
        cert = self.tls_certificate
        if cert is None or event.fingerprint != cert.fingerprint:
            return  # an answer about a certificate no longer in force
        self._tls_loaded = True
        if event.key is not None and der_key_matches(cert, event.key):
            self.tls_key = event.key
        else:
            if event.key is not None:
                self._emit("tls.key_mismatch", fingerprint=cert.fingerprint)
            if self.want_tls_key:
                self._tls_ask_at = now
        self._serve_tls()

    def _serve_tls(self) -> None:
        """Tell the driver what HTTPS serves, when that changed."""
        cert = self.tls_certificate
        if cert is not None and self.tls_key is not None:
            fingerprint, reason = cert.fingerprint, ""
        else:
            fingerprint = None
            reason = NO_CERTIFICATE if cert is None else WAITING_FOR_KEY if self._tls_loaded else LOADING_KEY
        if (fingerprint, reason) == self._tls_served:
            return
        self._tls_served = (fingerprint, reason)
        if fingerprint is None:
            self._actions.append(ServeTls(None, b"", b"", reason))
        else:
            self._actions.append(ServeTls(fingerprint, cert.chain_pem(), self.tls_key, ""))

    # ---- asking for the key ----------------------------------------------------------------------

    def _tls_deadline(self) -> float | None:
        return self._tls_ask_at if self._tls_ask_at != float("inf") else None

    def _tls_step(self, now: float) -> None:
        if self._tls_deferred and not self._settling(now):
            self._answer_deferred(now)
        if now < self._tls_ask_at:
            return
        self._tls_ask_at = float("inf")
        if self.tls_certificate is None or self.tls_key is not None or not self.want_tls_key:
            return
        for session in self.peers():
            self._ask_tls_key(session, now)
        self._tls_ask_at = now + TLS_KEY_ASK_S

    def _answer_deferred(self, now: float) -> None:
        deferred, self._tls_deferred = self._tls_deferred, {}
        for conn_id, fingerprint in deferred.items():
            session = self._sessions.get(conn_id)
            if session is not None and session.ready:
                self._on_tls_key_request(session, m.TlsKeyRequest(fingerprint), now)

    def _tls_ready(self, session: Session, now: float) -> None:
        """A new ready session: ask it at once if we wait for the key."""
        if self._tls_loaded and self.tls_key is None and self.want_tls_key and self.tls_certificate is not None:
            self._ask_tls_key(session, now)

    def _ask_tls_key(self, session: Session, now: float) -> None:
        if FEATURE_TLS_KEY in session.features:
            self._send(session, m.TlsKeyRequest(bytes.fromhex(self.tls_certificate.fingerprint)), now)

    # ---- answering and receiving -------------------------------------------------------------------

    def _on_tls_key_request(self, session: Session, msg: m.TlsKeyRequest, now: float) -> None:
        cert = self.tls_certificate
        if cert is None or self.tls_key is None or msg.fingerprint.hex() != cert.fingerprint:
            return  # we do not hold that key: another peer may
        if session.tls_key_sent == cert.fingerprint:
            return  # it has it already, from us
        if session.peer.role not in TLS_KEY_ROLES or self.revocations.is_revoked(session.node_id):
            self._emit("tls.key_refused", node=session.node_id, role=session.peer.role.value)
            return
        if self._settling(now):  # a revocation we have not seen yet may be on its way: answer once settled
            if len(self._tls_deferred) < self.limits.sessions_max:
                self._tls_deferred[session.conn_id] = msg.fingerprint
            return
        session.tls_key_sent = cert.fingerprint
        self._send(session, m.TlsKey(msg.fingerprint, self.tls_key), now)
        self._emit("tls.key_sent", node=session.node_id, fingerprint=cert.fingerprint)

    def _on_tls_key(self, session: Session, msg: m.TlsKey, now: float) -> None:
        cert = self.tls_certificate
        if (cert is None or self.tls_key is not None or not self.want_tls_key
                or msg.fingerprint.hex() != cert.fingerprint):
            return  # unasked, or for a certificate no longer in force
        if not der_key_matches(cert, msg.key):
            raise RemoteProtocolError("TlsKey does not match the certificate it names")
        self.tls_key = msg.key
        self._tls_ask_at = float("inf")
        self._actions.append(StoreTlsKey(cert.fingerprint, msg.key))
        self._emit("tls.key_received", node=session.node_id, fingerprint=cert.fingerprint)
        self._serve_tls()
