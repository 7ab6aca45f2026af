"""`WorkspaceSFTP`, the SFTPServerInterface over the Workspace."""

from __future__ import annotations

import os

import paramiko
from paramiko.sftp import SFTP_OK

from common import paths
from common.errors import AlreadyExists, IsAFolder, NotAFolder, NotFound, Unsupported
from transfer.sftp.handles import DownloadHandle, UploadHandle, _attributes, _mtime, apply_attributes
from transfer.sftp.session import SshSession


class WorkspaceSFTP(paramiko.SFTPServerInterface):
    """Each SFTP operation as one Workspace call; failures are raised, translated in one place."""

    def __init__(self, session: SshSession, *args, **kwargs):
        super().__init__(session)
        self.session, self.ws = session, session.workspace
        self.handles: set = set()

    def session_ended(self):
        # paramiko calls this before close() on every handle left open: those were not
        # finished by the client, so an upload among them is aborted, never committed.
        for handle in list(self.handles):
            handle.end_session()

    def canonicalize(self, path):
        return paths.normalise(path)

    def stat(self, path):
        return _attributes(self.ws.stat(path))

    lstat = stat  # the Workspace has no symlinks

    def list_folder(self, path):
        return [_attributes(entry) for entry in self.ws.list_dir(path)]

    def open(self, path, flags, attr):
        access = flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
        if access == os.O_RDONLY:
            return DownloadHandle(self, self.ws.fingerprint(path))
        if access == os.O_RDWR or flags & os.O_APPEND:
            raise Unsupported("Files are uploaded whole, from the start; append and read-write opens are not supported")
        self._check_replaceable(path, flags)
        return UploadHandle(self, self.ws.open_write(path, mtime=_mtime(attr)))

    def _check_replaceable(self, path: str, flags: int) -> None:
        try:
            existing = self.ws.stat(path)
        except NotFound:
            if not flags & os.O_CREAT:
                raise
            return
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise AlreadyExists()
        if not existing.is_folder and existing.size and not flags & os.O_TRUNC:
            # Writing into an existing file without truncating it is a random-access edit.
            raise Unsupported("Only whole-file uploads are supported; open with truncate to replace a file")

    def remove(self, path):
        if self.ws.stat(path).is_folder:
            raise IsAFolder()
        self.ws.remove(path, recursive=False)
        return SFTP_OK

    def rename(self, oldpath, newpath):
        self.ws.rename(oldpath, newpath, overwrite=False)  # SFTP v3: the target must not exist
        return SFTP_OK

    def posix_rename(self, oldpath, newpath):
        self.ws.rename(oldpath, newpath, overwrite=True)
        return SFTP_OK

    def mkdir(self, path, attr):
        self.ws.make_dir(path)
        return SFTP_OK

    def rmdir(self, path):
        if not self.ws.stat(path).is_folder:
            raise NotAFolder()
        self.ws.remove(path, recursive=False)
        return SFTP_OK

    def chattr(self, path, attr):
        apply_attributes(self.ws, path, attr)
        return SFTP_OK

    def readlink(self, path):
        raise Unsupported("Symbolic links are not supported")

    def symlink(self, target_path, path):
        raise Unsupported("Symbolic links are not supported")
