"""The account's settings (admins): password policy, MFA requirement, IP allow-list, link policy."""
from portal.settings.views import bp

__all__ = ["bp"]
