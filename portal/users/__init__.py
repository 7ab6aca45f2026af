"""The Users tab (account admins): list, create by invitation, edit, disable, reset, access rules, delete."""
from portal.users.views import bp

__all__ = ["bp"]
