"""The pages a share link opens at `/s/<token>`, for visitors with no account."""
from portal.links.views import bp

__all__ = ["bp"]
