"""The file browser: the signed-in user's workspace."""
from portal.files.views import bp

__all__ = ["bp"]
