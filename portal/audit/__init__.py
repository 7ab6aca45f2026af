"""The audit page (admins): filter, page through and download the account's events."""
from portal.audit.views import bp

__all__ = ["bp"]
