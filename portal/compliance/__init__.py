"""The compliance page (admins): the account's security posture at a glance."""
from portal.compliance.views import bp

__all__ = ["bp"]
