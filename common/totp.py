"""Moved to common.auth.totp; this name stays only until the portal CLI imports it from there."""
from common.auth.totp import *  # noqa: F401,F403
