"""Sign-in, the code step and sign-out (`views`), and who a request is for (`current`)."""
from portal.auth.views import bp

__all__ = ["bp"]
