"""The Contacts tab (account admins): the people outside the account that folders are shared with."""
from portal.contacts.views import bp

__all__ = ["bp"]
