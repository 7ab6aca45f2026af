"""The FTPS door: pyftpdlib subclasses that translate FTP over TLS onto `common`.

Logins go through `common.auth`, every file operation through the `Workspace`; nothing here
decides a permission or touches storage. What stock pyftpdlib gets wrong is
fixed in our subclasses, with options set on them and never on the library's classes:

- TLS everywhere: AUTH TLS before USER, PROT P enforced when a data connection opens, PROT C
  refused, TLS 1.2+ with AES-256-GCM only.
- A data connection must resume a TLS session of the same login: one issued to its own control
  connection, or to another connection authenticated as the same user (rclone and other Go
  clients share one session cache between their parallel connections). `TLSSessions` books
  the owner of every session the server issues; a fresh session, a session of another user or
  of a connection that never logged in is refused, and the passive port keeps listening for
  the rightful connection until its accept timeout. Only control connections are issued
  sessions: a TLS 1.3 ticket on an upload's data connection, which the client never reads,
  would make its kernel reset the connection and cut the upload.
- Bytes are stored and sent as they are in TYPE A too (as vsftpd does by default), so the
  fingerprints are those of the client's file.
- An upload is committed only when the client closed the data connection with TLS
  close-notify, before the 226 reply; a bare FIN, ABOR, timeout or error aborts it.
- One error translator (`reply_for`), applied in one place (`pre_process_command`).
- pyftpdlib's log, which prints paths and user names, is replaced by one that logs ids.

`python -m transfer.ftps` serves explicit FTPS on FTPS_PORT and, when set, implicit FTPS on
FTPS_IMPLICIT_PORT, one thread per session, until SIGTERM or SIGINT.

Modules: `tls` (contexts, session booking, reuse check), `authorizer`, `filesystem` (the
AbstractedFS over the Workspace), `data` (DTP and passive listener), `control` (the handler),
`replies`, `server` (listeners, admission, `main`); `python -m transfer.ftps` runs `server.main`.
"""

import logging

from transfer.ftps.control import FTPSHandler, ImplicitFTPSHandler
from transfer.ftps.data import WorkspaceDTPHandler, WorkspacePassiveDTP, _TransferEnd
from transfer.ftps.filesystem import WorkspaceFS
from transfer.ftps.server import FTPSServer, build_servers, handler_class, main, serve
from transfer.ftps.tls import SessionOwner, TLSSessions, session_reused, tls_context

log = logging.getLogger(__name__)

__all__ = ["FTPSHandler", "FTPSServer", "ImplicitFTPSHandler", "SessionOwner", "TLSSessions",
           "WorkspaceDTPHandler", "WorkspaceFS", "WorkspacePassiveDTP", "_TransferEnd",
           "build_servers", "handler_class", "log", "main", "serve", "session_reused",
           "tls_context"]
