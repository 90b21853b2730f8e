"""Secure-channel throughput against raw TCP, two processes on loopback, in one run.

    python bench/channel_bench.py [--gib 2] [--rounds 3] [--json] [--modes raw,chacha,aesgcm,tls]

For each mode a receiver process is spawned; this process connects over 127.0.0.1, sends `--gib`
GiB through the stream, and waits for the receiver's one-byte acknowledgement after the last byte.
The figure is bytes / (first send .. acknowledgement), so the handshake is excluded and both
encryption (here) and decryption (there) are included. The machine is shared and noisy, so the
modes run interleaved for `--rounds` rounds and each mode's figure is its median round; the ratio
is median over the raw median. Modes:

- raw:    plain trio TCP (the baseline of the same run)
- chacha: SecureStream forced to Noise_XX_25519_ChaChaPoly_BLAKE2s (chosen when either end lacks
          AES instructions)
- aesgcm: SecureStream forced to Noise_XX_25519_AESGCM_SHA256 (chosen when both ends have them)
- tls:    TLS 1.3 over trio.SSLStream, throwaway self-signed certificate, server-authenticated
          only (the rejected alternative)

Besides MB/s it prints each side's CPU time per byte, which is steadier than wall time here.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesh.drivers.channel import (  # noqa: E402
    NOISE_AESGCM,
    NOISE_CHACHA,
    Authenticate,
    LocalIdentity,
    SecureStream,
    channel_psk,
    membership_authenticator,
    secure_accept,
    secure_connect,
)
from mesh.state import membership  # noqa: E402

MODES = ("raw", "chacha", "aesgcm", "tls")
NOISE_NAMES = {"chacha": NOISE_CHACHA, "aesgcm": NOISE_AESGCM}
SEND_BLOCK_BYTES = 1024 * 1024  # the sender writes this buffer over and over
RECEIVE_BYTES_MAX = 256 * 1024  # raw and TLS receivers ask for this much per read
GIB = 1024**3


@dataclass(frozen=True)
class Secrets:
    """Picklable key material both processes need (throwaway, made per run)."""

    authority_private: bytes  # raw Ed25519 authority private key
    sender_private: bytes  # raw Ed25519 node key of the sender
    sender_chain: bytes  # sender's credential chain
    receiver_private: bytes  # raw Ed25519 node key of the receiver
    receiver_chain: bytes  # receiver's credential chain
    tls_key_pem: bytes  # TLS server private key (PEM)
    tls_cert_pem: bytes  # TLS server self-signed certificate (PEM)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _tls_material() -> tuple[bytes, bytes]:
    """A throwaway P-256 key and self-signed certificate for "localhost"."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def make_secrets() -> Secrets:
    """A fresh mesh with two members, and TLS material."""
    now = time.time()
    authority = Ed25519PrivateKey.generate()
    sender, receiver = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    sender_chain = membership.create_first_credential(authority, sender, "bench-sender", now)
    receiver_chain = membership.create_first_credential(authority, receiver, "bench-receiver", now)
    key_pem, cert_pem = _tls_material()
    return Secrets(
        authority_private=_raw(authority),
        sender_private=_raw(sender),
        sender_chain=sender_chain,
        receiver_private=_raw(receiver),
        receiver_chain=receiver_chain,
        tls_key_pem=key_pem,
        tls_cert_pem=cert_pem,
    )


def _identity(secrets: Secrets, private: bytes, chain: bytes) -> LocalIdentity:
    authority = Ed25519PrivateKey.from_private_bytes(secrets.authority_private)
    return LocalIdentity(Ed25519PrivateKey.from_private_bytes(private), chain, channel_psk(_raw_public(authority), None))


def _authenticator(secrets: Secrets) -> Authenticate:
    authority = Ed25519PrivateKey.from_private_bytes(secrets.authority_private)
    return membership_authenticator(_raw_public(authority))


def _server_tls_context(secrets: Secrets) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.TemporaryDirectory() as workdir:  # ssl loads keys from files only
        key_path, cert_path = Path(workdir) / "key.pem", Path(workdir) / "cert.pem"
        key_path.write_bytes(secrets.tls_key_pem)
        cert_path.write_bytes(secrets.tls_cert_pem)
        context.load_cert_chain(cert_path, key_path)
    return context


def _client_tls_context(secrets: Secrets) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=secrets.tls_cert_pem.decode("ascii"))
    return context


# ---- receiver process ------------------------------------------------------------------------


async def _wrap_server(mode: str, stream: trio.abc.Stream, secrets: Secrets) -> trio.abc.Stream:
    """The receiver's side of the mode's handshake."""
    if mode == "raw":
        return stream
    if mode == "tls":
        tls = trio.SSLStream(stream, _server_tls_context(secrets), server_side=True)
        await tls.do_handshake()
        return tls
    local = _identity(secrets, secrets.receiver_private, secrets.receiver_chain)
    return await secure_accept(stream, local, _authenticator(secrets), ciphers=[NOISE_NAMES[mode]])


async def _receive_all(mode: str, total: int, secrets: Secrets, report: Connection) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    report.send(listeners[0].socket.getsockname()[1])
    stream = await _wrap_server(mode, await listeners[0].accept(), secrets)
    want = None if mode in NOISE_NAMES else RECEIVE_BYTES_MAX
    got = 0
    cpu_started = time.process_time()
    while got < total:
        data = await stream.receive_some(want)
        if not data:
            raise RuntimeError(f"{mode}: stream ended after {got} of {total} bytes")
        got += len(data)
    report.send(time.process_time() - cpu_started)
    await stream.send_all(b"k")
    await trio.sleep(0.2)  # let the acknowledgement leave before closing
    await stream.aclose()


def receiver_main(mode: str, total: int, secrets: Secrets, report: Connection) -> None:
    """Entry point of the receiver process."""
    trio.run(_receive_all, mode, total, secrets, report)


# ---- sender (this process) -------------------------------------------------------------------


async def _wrap_client(mode: str, stream: trio.abc.Stream, secrets: Secrets) -> trio.abc.Stream:
    if mode == "raw":
        return stream
    if mode == "tls":
        tls = trio.SSLStream(stream, _client_tls_context(secrets), server_hostname="localhost")
        await tls.do_handshake()
        return tls
    local = _identity(secrets, secrets.sender_private, secrets.sender_chain)
    return await secure_connect(stream, local, _authenticator(secrets), ciphers=[NOISE_NAMES[mode]])


async def _send_all(mode: str, port: int, total: int, secrets: Secrets) -> Run:
    """Connect, handshake, then time sending `total` bytes until acknowledged."""
    stream = await _wrap_client(mode, await trio.open_tcp_stream("127.0.0.1", port), secrets)
    detail = "plain TCP"
    if isinstance(stream, SecureStream):
        detail = stream.protocol_name.decode()
    if isinstance(stream, trio.SSLStream):
        detail = f"{stream.version()} {stream.cipher()[0]}"
    block = os.urandom(SEND_BLOCK_BYTES)
    started, cpu_started = time.perf_counter(), time.process_time()
    left = total
    while left > 0:
        piece = block if left >= len(block) else block[:left]
        await stream.send_all(piece)
        left -= len(piece)
    cpu = time.process_time() - cpu_started
    ack = await stream.receive_some(1)
    elapsed = time.perf_counter() - started
    if ack != b"k":
        raise RuntimeError(f"{mode}: no acknowledgement (got {ack!r})")
    await stream.aclose()
    return Run(elapsed, cpu, 0.0, detail)


@dataclass(frozen=True)
class Run:
    """One transfer, as both processes saw it."""

    seconds: float  # wall time from the first send to the acknowledgement
    sender_cpu_s: float  # CPU time (user + system) the sender spent sending
    receiver_cpu_s: float  # CPU time the receiver spent receiving
    detail: str  # protocol and cipher actually used


def run_mode(mode: str, total: int, secrets: Secrets) -> Run:
    """Spawn the receiver and send `total` bytes to it through `mode`."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    receiver = context.Process(target=receiver_main, args=(mode, total, secrets, theirs))
    receiver.start()
    try:
        if not ours.poll(30):
            raise RuntimeError(f"{mode}: the receiver did not start")
        port = ours.recv()
        run = trio.run(_send_all, mode, port, total, secrets)
        return dataclasses.replace(run, receiver_cpu_s=ours.recv())
    finally:
        receiver.join(30)
        if receiver.is_alive():
            receiver.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="GiB per mode and round (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of " + ",".join(MODES))
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes) or args.rounds < 1 or args.gib <= 0:
        parser.error(f"modes are {', '.join(MODES)}; rounds >= 1; gib > 0")
    total = int(args.gib * GIB)
    secrets = make_secrets()
    runs: dict[str, list[Run]] = {mode: [] for mode in modes}
    for round_no in range(1, args.rounds + 1):
        for mode in modes:
            run = run_mode(mode, total, secrets)
            runs[mode].append(run)
            if not args.json:
                print(f"round {round_no} {mode:7s} {_line(total, run)}", flush=True)
    results = _summarise(total, runs)
    if args.json:
        print(json.dumps(_document(total, args.rounds, results), indent=2))
    else:
        _print_table(total, results)
    return 0


def _line(total: int, run: Run) -> str:
    return (
        f"{total / run.seconds / 1e6:8.0f} MB/s  cpu ns/B send {run.sender_cpu_s / total * 1e9:.2f}"
        f" receive {run.receiver_cpu_s / total * 1e9:.2f}"
    )


def _summarise(total: int, runs: dict[str, list[Run]]) -> dict[str, dict]:
    """Per mode: median MB/s over rounds, its ratio to raw's median, median CPU per byte."""
    rates = {mode: [total / r.seconds / 1e6 for r in rs] for mode, rs in runs.items()}
    medians = {mode: statistics.median(figures) for mode, figures in rates.items()}
    raw = medians.get("raw")
    return {
        mode: {
            "mb_per_s": medians[mode],
            "ratio_to_raw": medians[mode] / raw if raw else None,
            "rounds_mb_per_s": rates[mode],
            "sender_cpu_ns_per_byte": _median_ns_per_byte([r.sender_cpu_s for r in rs], total),
            "receiver_cpu_ns_per_byte": _median_ns_per_byte([r.receiver_cpu_s for r in rs], total),
            "detail": rs[-1].detail,
        }
        for mode, rs in runs.items()
    }


def _median_ns_per_byte(cpu_seconds: list[float], total: int) -> float:
    return statistics.median(cpu_seconds) / total * 1e9


def _print_table(total: int, results: dict[str, dict]) -> None:
    print(f"\n{total / GIB:g} GiB per run, median of rounds, two processes on 127.0.0.1")
    for mode, entry in results.items():
        ratio = entry["ratio_to_raw"]
        ratio_text = f"{ratio:5.2f}x raw" if ratio is not None else ""
        cpu = (
            f"cpu ns/B send {entry['sender_cpu_ns_per_byte']:.2f}"
            f" receive {entry['receiver_cpu_ns_per_byte']:.2f}"
        )
        print(f"{mode:7s} {entry['mb_per_s']:8.0f} MB/s  {ratio_text}  {cpu}  {entry['detail']}")


def _document(total: int, rounds: int, results: dict) -> dict:
    return {
        "bench": "channel",
        "bytes": total,
        "rounds": rounds,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "results": results,
    }


if __name__ == "__main__":
    sys.exit(main())
