"""The AbstractedFS over the Workspace, and the file objects the data channel reads and writes."""

from __future__ import annotations

import os
import stat as stat_module
from datetime import datetime, timezone

from pyftpdlib.filesystems import AbstractedFS

from common import paths
from common.errors import IsAFolder, NotAFolder, NotFound, Unsupported
from common.vfs import Entry, Workspace


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class WorkspaceFS(AbstractedFS):
    """pyftpdlib's file system over the Workspace: virtual paths only, nothing on the real disk.

    Every public method of AbstractedFS is overridden (a test checks it), so no upstream method
    can fall through to `os`. "Real" and virtual paths are the same canonical virtual path.
    """

    def __init__(self, root, cmd_channel):
        super().__init__("/", cmd_channel)
        self.workspace = Workspace(cmd_channel.services, cmd_channel.principal)

    @property
    def root(self):
        return "/"

    @root.setter
    def root(self, path):
        self._root = "/"

    @property
    def cwd(self):
        return self._cwd

    @cwd.setter
    def cwd(self, path):
        self._cwd = path

    # -- paths: normalised once, lexically, by common.paths
    def ftpnorm(self, ftppath):
        return paths.normalise(ftppath, self.cwd)

    def ftp2fs(self, ftppath):
        return paths.normalise(ftppath, self.cwd)

    def fs2ftp(self, fspath):
        return fspath

    def validpath(self, path):
        return True  # a normalised virtual path cannot leave the workspace

    def realpath(self, path):
        return paths.normalise(path)

    # -- reading
    def stat(self, path):
        return _stat_result(self.workspace.stat(path))

    def lstat(self, path):
        return self.stat(path)

    def isfile(self, path):
        return self._kind(path) == "file"

    def isdir(self, path):
        return self._kind(path) == "folder"

    def islink(self, path):
        return False

    def lexists(self, path):
        return self._kind(path) is not None

    def readlink(self, path):
        raise Unsupported("There are no symbolic links here")

    def getsize(self, path):
        return self.workspace.stat(path).size

    def getmtime(self, path):
        return self.workspace.stat(path).mtime.timestamp()

    def listdir(self, path):
        return [entry.name for entry in self.workspace.list_dir(path)]

    def listdirinfo(self, path):
        return self.listdir(path)

    def entries(self, path) -> list[Entry]:
        """A folder's entries, or the one entry of a file (LIST and STAT accept both)."""
        try:
            return self.workspace.list_dir(path)
        except NotAFolder:
            return [self.workspace.stat(path)]

    # -- changing
    def open(self, filename, mode):
        if mode == "rb":
            return DownloadFile(self.workspace.open_read(filename))
        if mode == "wb":
            return UploadFile(self.workspace.open_write(filename))
        raise Unsupported("Uploads are written from the start; appending or resuming is not supported")

    def mkstemp(self, suffix="", prefix="", dir=None, mode="wb"):
        raise Unsupported("STOU is not supported; choose a file name")

    def chdir(self, path):
        if not self.workspace.stat(path).is_folder:
            raise NotAFolder()
        self.cwd = path

    def mkdir(self, path):
        self.workspace.make_dir(path)

    def rmdir(self, path):
        if not self.workspace.stat(path).is_folder:
            raise NotAFolder()
        self.workspace.remove(path, recursive=False)

    def remove(self, path):
        if self.workspace.stat(path).is_folder:
            raise IsAFolder()
        self.workspace.remove(path, recursive=False)

    def rename(self, src, dst):
        self.workspace.rename(src, dst)

    def chmod(self, path, mode):
        raise Unsupported("File modes are not kept")

    def utime(self, path, timeval):
        self.workspace.set_mtime(path, datetime.fromtimestamp(timeval, tz=timezone.utc))

    def get_user_by_uid(self, uid):
        return "owner"

    def get_group_by_gid(self, gid):
        return "group"

    # -- listings: `listing` holds names (pyftpdlib) or Entry objects (ours: one query per folder)
    def format_list(self, basedir, listing, ignore_err=True):
        for entry in self._entries_of(basedir, listing, ignore_err):
            kind = "d" if entry.is_folder else "-"
            mode = "rwxr-xr-x" if entry.writable else "r-xr-xr-x"
            line = f"{kind}{mode}   1 owner    group    {entry.size:>8} {_ls_time(entry.mtime)} {entry.name}\r\n"
            yield line.encode("utf-8")

    def format_mlsx(self, basedir, listing, perms, facts, ignore_err=True):
        for entry in self._entries_of(basedir, listing, ignore_err):
            found = {"type": "dir" if entry.is_folder else "file", "size": entry.size,
                     "modify": entry.mtime.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S"),
                     "perm": _mlsx_perm(entry)}
            shown = "".join(f"{name}={found[name]};" for name in sorted(found) if name in facts)
            yield f"{shown} {entry.name}\r\n".encode("utf-8")

    def _entries_of(self, basedir, listing, ignore_err):
        for item in listing:
            if isinstance(item, Entry):
                yield item
                continue
            try:
                yield self.workspace.stat(paths.join(basedir, item))
            except NotFound:
                if not ignore_err:
                    raise

    def _kind(self, path) -> str | None:
        try:
            return self.workspace.stat(path).kind
        except (NotFound, NotAFolder):
            return None


def _stat_result(entry: Entry) -> os.stat_result:
    kind = stat_module.S_IFDIR if entry.is_folder else stat_module.S_IFREG
    mode = kind | (0o755 if entry.writable else 0o555)
    seconds = entry.mtime.timestamp()
    return os.stat_result((mode, 0, 0, 1, 0, 0, entry.size, seconds, seconds, seconds))


def _ls_time(mtime: datetime) -> str:
    when = mtime.astimezone(timezone.utc)
    recent = (datetime.now(timezone.utc) - when).days < 180
    return f"{MONTHS[when.month - 1]} {when.day:02d} " + (f"{when:%H:%M}" if recent else f" {when.year}")


def _mlsx_perm(entry: Entry) -> str:
    if entry.is_folder:
        return "elcmfdp" if entry.writable else "el"
    return "rwfd" if entry.writable else "r"


class UploadFile:
    """What the data channel writes into: an Upload that only an explicit `commit()` makes visible."""

    name = "<upload>"  # pyftpdlib may show a file's name; a path must not reach a log

    def __init__(self, upload):
        self.upload = upload

    @property
    def closed(self) -> bool:
        return self.upload.state != "open"

    def write(self, data) -> int:
        return self.upload.write(bytes(data))

    def commit(self) -> None:
        self.upload.commit()

    def abort(self, reason: str) -> None:
        self.upload.abort(reason)

    def close(self) -> None:
        # Closing is never completion (pyftpdlib closes files before it knows): abort if still open.
        self.abort("connection closed")


class DownloadFile:
    """What the data channel reads from: a Download's plaintext blocks, as `read(n)`."""

    name = "<download>"

    def __init__(self, download):
        self.download = download
        self._blocks = iter(download)
        self._block = memoryview(b"")  # the rest of the current plaintext block
        self._exhausted = False
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        if not self._block and size >= 0 and not self._exhausted:
            # The usual case: the reader asks a whole chunk's worth, and gets the chunk itself.
            block = next(self._blocks, None)
            if block is None:
                self._exhausted = True
                return b""
            if block and len(block) <= size:
                return block
            self._block = memoryview(block)  # or an empty file's empty chunk: the loop ends it
        pieces, wanted = [], size
        while (size < 0 or wanted > 0) and not self._exhausted:
            if not self._block:
                try:
                    self._block = memoryview(next(self._blocks))
                except StopIteration:
                    self._exhausted = True
                    break
            take = len(self._block) if size < 0 else min(wanted, len(self._block))
            pieces.append(self._block[:take])
            self._block = self._block[take:]
            wanted -= take
        return b"".join(pieces)

    def close(self) -> None:
        # A download read to its end audited itself; anything else is audited as interrupted.
        if not self.closed:
            self.closed = True
            if not self._exhausted:
                self.download.close("failed", "interrupted")
