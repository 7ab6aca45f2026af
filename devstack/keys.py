"""The development TLS certificate (FTPS) and SSH host key (SFTP), made once and kept in var/."""
from __future__ import annotations

import datetime
import ipaddress
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from devstack.files import write_private

log = logging.getLogger(__name__)

CERT_DAYS = 825  # the longest validity clients accept for a TLS server certificate
RENEW_BEFORE = datetime.timedelta(days=30)


def ensure_tls_certificate(cert_file: Path, key_file: Path) -> bool:
    """Make a self-signed certificate for 127.0.0.1/localhost unless a valid one exists."""
    if _certificate_is_usable(cert_file, key_file):
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(key_file, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    cert_file.write_bytes(_self_signed(key).public_bytes(serialization.Encoding.PEM))
    log.info("made a self-signed TLS certificate %s", cert_file)
    return True


def ensure_ssh_host_key(key_file: Path) -> bool:
    """Make an Ed25519 host key in OpenSSH format unless one exists; True if made."""
    if key_file.exists():
        return False
    key = ed25519.Ed25519PrivateKey.generate()
    write_private(key_file, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    log.info("made an SSH host key %s", key_file)
    return True


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sealdrop development")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alternative_names = x509.SubjectAlternativeName([
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ])
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(alternative_names, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))


def _certificate_is_usable(cert_file: Path, key_file: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    expires = cert.not_valid_after_utc
    still_valid = expires - datetime.datetime.now(datetime.timezone.utc) > RENEW_BEFORE
    return still_valid and certificate_matches_key(cert, key)


def certificate_matches_key(cert: x509.Certificate, key) -> bool:
    """Whether the certificate carries the public half of this private key."""
    def spki(public_key) -> bytes:
        return public_key.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    return spki(cert.public_key()) == spki(key.public_key())
