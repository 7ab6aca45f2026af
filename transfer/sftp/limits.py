"""The SFTP door's limits: the frame's session caps plus its idle timeout, and the SFTP sizes."""

from __future__ import annotations

from dataclasses import dataclass

from transfer.sessions import SessionLimits

# SFTP limits: OpenSSH's sftp-server caps messages at 256 KiB; clients write 32 KiB at a time.
MAX_PACKET = 256 * 1024 + 1024
# The longest READ answered and WRITE asked for, offered to clients by limits@openssh.com as
# OpenSSH's sftp-server does: a reply then fits the client's 256 KiB message limit. Clients
# that learn it (OpenSSH 8.8+) move 255 KiB per request instead of 32 KiB, eight times fewer
# round trips through the request loop.
TRANSFER_LENGTH = 256 * 1024 - 1024
MAX_READ = TRANSFER_LENGTH
MAX_HANDLES = 64  # per connection, over all its channels
MAX_SESSION_CHANNELS = 16
# Pipelining clients (rclone's concurrent writes) deliver WRITEs slightly out of order.
REORDER_WINDOW_BYTES = 8 * 1024 * 1024
REORDER_WINDOW_PIECES = 256
# Early writes held in memory across every handle of one connection: the reordering bound.
SESSION_REORDER_BYTES = 16 * 1024 * 1024
# A read slightly behind or ahead of the stream is served from memory, not by re-decrypting.
READ_KEEP_BYTES = 2 * 1024 * 1024
READ_SKIP_BYTES = 2 * 1024 * 1024
EXTENSIONS = (("posix-rename@openssh.com", "1"), ("check-file", "md5,sha256"), ("limits@openssh.com", "1"))
HASHES = {"md5": "md5", "sha256": "sha256"}


@dataclass(frozen=True)
class Limits(SessionLimits):
    """The session caps every transfer door has (`SessionLimits.from_settings`), and how long
    a logged-in SFTP session may stay idle."""

    idle_timeout: float = 900.0
