"""A throwaway certificate authority and leaf certificates for the HTTPS tests (cryptography only)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class TestCa:
    """A root CA (self-signed) that signs leaves."""

    __test__ = False  # not a pytest class

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, name: str = "AssetMesh Test CA") -> TestCa:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(_now() - DAY)
                .not_valid_after(_now() + 30 * DAY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def leaf(self, names: list[str], days: float = 20, not_before_days: float = -1,
             key: ec.EllipticCurvePrivateKey | None = None) -> tuple[bytes, bytes]:
        """(chain PEM: the leaf only, key PEM) of a server certificate for `names`."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        alt = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        start = _now() + datetime.timedelta(days=not_before_days)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(start)
                .not_valid_after(_now() + datetime.timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def write_leaf(self, directory: Path, stem: str, names: list[str], **kwargs) -> tuple[Path, Path, bytes]:
        """Write STEM.crt and STEM.key; (cert path, key path, key PEM)."""
        chain, key = self.leaf(names, **kwargs)
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(chain)
        key_path.write_bytes(key)
        return cert_path, key_path, key


def key_der(key_pem: bytes) -> bytes:
    """PKCS#8 DER of a PEM key (to look for the key's bytes anywhere)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def private_scalar(key_pem: bytes) -> bytes:
    """The EC private value (32 bytes): what must appear nowhere but in key files."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_numbers().private_value.to_bytes(32, "big")


def leaf_der(chain_pem: bytes) -> bytes:
    return x509.load_pem_x509_certificates(chain_pem)[0].public_bytes(serialization.Encoding.DER)
