"""Who may come in, and the credentials and access rules an administrator sets.

The login gate and the rules it enforces, one module per rule:

- gate: authenticate, verify_totp (the second step), key logins, AuthResult;
- lockout: the per-name freeze after repeated failures, and unlocking;
- defender: the per-IP ban after failures for several names;
- addresses: canonical client addresses and what counts as one client (IPv6 /64);
- allowlist: the account's and users' IP allow-lists (parse_cidr, is_address_allowed);
- policy: the password policy, the MFA requirement and its exemption (mfa_state);
- totp: TOTP codes, enrolment and recovery codes;
- app_passwords: FTPS app passwords; ssh_keys: SFTP public keys;
- web_sessions: pruning the rows of portal sessions that ended;
- admin: the audit event and the plan rule every administrative change shares.

How each door's second factor works is the door policy in common.doors. Password hashing
and the password rules stay in common.passwords, below accounts and process handles that
use them too. The names the doors and the CLI use are re-exported here.
"""
from common.auth.addresses import address_group, client_ip
from common.auth.allowlist import add_ip_rule, is_address_allowed, parse_cidr, remove_ip_rule
from common.auth.app_passwords import (
    APP_PASSWORD_PREFIX, AppPasswordInfo, create_app_password, list_app_passwords, revoke_app_password,
)
from common.auth.defender import is_banned
from common.auth.gate import (
    SECOND_FACTOR_SECONDS, UNAUTHENTICATED_ENDS_AUDITED_PER_MINUTE, AuthResult, authenticate,
    prune_login_state, record_unauthenticated_end, verify_totp,
)
from common.auth.lockout import is_locked_out, unlock_user
from common.auth.policy import set_mfa_exempt, set_policy
from common.auth.ssh_keys import (
    MAX_KEY_LINE, PublicKey, SshKeyInfo, add_ssh_key, is_authorized_key, list_ssh_keys, parse_public_key,
    remove_ssh_key,
)

__all__ = [
    "APP_PASSWORD_PREFIX", "MAX_KEY_LINE", "SECOND_FACTOR_SECONDS", "UNAUTHENTICATED_ENDS_AUDITED_PER_MINUTE",
    "AppPasswordInfo", "AuthResult", "PublicKey", "SshKeyInfo", "add_ip_rule", "add_ssh_key", "address_group",
    "authenticate", "client_ip", "create_app_password", "is_address_allowed", "is_authorized_key",
    "is_banned", "is_locked_out", "list_app_passwords", "list_ssh_keys", "parse_cidr", "parse_public_key",
    "prune_login_state", "record_unauthenticated_end", "remove_ip_rule", "remove_ssh_key", "revoke_app_password",
    "set_mfa_exempt", "set_policy", "unlock_user", "verify_totp",
]
