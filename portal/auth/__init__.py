"""Sign-in, the code step and sign-out (`views`), the set-password links and "Forgot password"
(`passwords`, whose routes join the same blueprint), and who a request is for (`current`)."""
from portal.auth import passwords  # noqa: F401  (registers its routes on bp)
from portal.auth.views import bp

__all__ = ["bp"]
