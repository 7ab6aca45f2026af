"""A small real SMTP server for mail tests (STARTTLS with a throwaway certificate, AUTH PLAIN)."""
from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class TinySmtp:
    """A one-connection-at-a-time SMTP server on 127.0.0.1 that speaks STARTTLS and AUTH PLAIN."""

    def __init__(self, context: ssl.SSLContext | None, *, refuse_recipients: bool = False):
        self.context, self.refuse_recipients = context, refuse_recipients
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[dict] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            self._session(conn)

    def _session(self, conn) -> None:
        state = {"tls": False, "auth": None, "rcpt": [], "data": b""}
        reader = conn.makefile("rb")
        conn.sendall(b"220 tiny ESMTP\r\n")
        while line := reader.readline():
            verb = line.strip().split(b" ")[0].upper()
            if verb == b"EHLO":
                offers = [b"250-tiny", b"250-AUTH PLAIN"] + ([b"250-STARTTLS"] if self.context else [])
                conn.sendall(b"\r\n".join(offers + [b"250 SIZE 1000000"]) + b"\r\n")
            elif verb == b"STARTTLS":
                conn.sendall(b"220 go ahead\r\n")
                conn = self.context.wrap_socket(conn, server_side=True)
                reader, state["tls"] = conn.makefile("rb"), True
            elif verb == b"AUTH":
                state["auth"] = line.strip().split(b" ")[2]
                conn.sendall(b"235 ok\r\n")
            elif verb in (b"MAIL", b"RSET", b"NOOP"):
                conn.sendall(b"250 ok\r\n")
            elif verb == b"RCPT":
                state["rcpt"].append(line.strip().split(b":", 1)[1])
                if self.refuse_recipients:  # as real servers do, the reply repeats the address
                    conn.sendall(b"550 5.1.1 " + state["rcpt"][-1] + b": Recipient address rejected\r\n")
                else:
                    conn.sendall(b"250 ok\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 end with .\r\n")
                while (chunk := reader.readline()) != b".\r\n":
                    state["data"] += chunk
                self.received.append(state)
                conn.sendall(b"250 queued\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file
