"""The SFTP door: paramiko over `common.auth` and the `Workspace`, and nothing else.

Layers, outermost first: `SftpServer` (listening socket, a thread per connection, session
caps, auth and idle timeouts), `HardenedTransport` (AES-256 ciphers, SHA-2 MACs, strict kex,
no SHA-1, MD5, CBC or 3DES), `SshSession` (logins through `common.auth`; every channel
request but the sftp subsystem refused and audited), `WorkspaceSFTPServer` (the SFTP packet
loop, the one error translator, check-file from stored fingerprints) and `WorkspaceSFTP`
with its `UploadHandle` and `DownloadHandle` (each operation one `Workspace` call).
Logs name sessions, users and accounts by id, never by name or path.

Modules: `transport` (hardened transport, algorithms, auth handler), `session` (the
ServerInterface), `interface` (the SFTPServerInterface), `handles`, `subsystem` (packet loop),
`limits`, `listener` (listener and `main`); `python -m transfer.sftp` runs `listener.main`.
"""
import logging

from transfer.sftp.limits import MAX_HANDLES, SESSION_REORDER_BYTES, Limits
from transfer.sftp.listener import SftpServer, load_host_key, main
from transfer.sftp.transport import CIPHERS, MACS

# paramiko's own DEBUG lines (transport and channels) carry names and client text: never emitted.
logging.getLogger(f"{__name__}.ssh").setLevel(logging.INFO)

__all__ = ["CIPHERS", "MACS", "MAX_HANDLES", "SESSION_REORDER_BYTES", "Limits", "SftpServer",
           "load_host_key", "main"]
