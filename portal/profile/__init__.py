"""My profile: password, MFA, SSH keys, FTPS app passwords, sessions and connection details."""
from portal.profile.views import bp

__all__ = ["bp"]
