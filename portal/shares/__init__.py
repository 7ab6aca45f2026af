"""Sharing: the share dialog of a folder, "Shared by me", and every link of the account for admins."""
from portal.shares.views import bp

__all__ = ["bp"]
