"""The ``ldap`` login source (``[ldap]`` section), through ldap3.
Spec: web_api.md "Login User" (``source: ldap``).

Options (Moonraker's names): ``ldap_host`` (required), ``ldap_port``
(389, or 636 with ``ldap_secure``), ``ldap_secure`` (LDAPS), ``base_dn``
(required), ``bind_dn`` / ``bind_password`` (the account used to search;
anonymous when absent), ``group_dn`` (the user must be a member),
``is_active_directory`` (search ``sAMAccountName`` instead of ``uid``),
``user_filter`` (a search filter with ``USERNAME`` as placeholder, e.g.
``(&(objectClass=person)(uid=USERNAME))``).

A login searches the user's entry with the bind account, then binds as that
entry with the given password; gevent's patched sockets keep the hub free.
"""
from __future__ import annotations

import logging
from typing import Any

from ..api import ApiError

log = logging.getLogger(__name__)


class LdapSource:
    """Authenticates users against an LDAP directory.

    Args:
        section: the ``[ldap]`` ConfigSection.
    Raises:
        ConfigError: a required option is missing.
    """

    def __init__(self, section: Any) -> None:
        self.host = section.get("ldap_host")
        self.secure = section.getboolean("ldap_secure", False)
        self.port = section.getint("ldap_port", 636 if self.secure else 389)
        self.base_dn = section.get("base_dn")
        self.bind_dn = section.get("bind_dn", None)
        self.bind_password = section.get("bind_password", None)
        self.group_dn = section.get("group_dn", None)
        self.active_directory = section.getboolean("is_active_directory", False)
        attr = "sAMAccountName" if self.active_directory else "uid"
        self.user_filter = section.get("user_filter", f"({attr}=USERNAME)")

    def authenticate(self, username: str, password: str) -> None:
        """Return when ``username``/``password`` bind successfully (and the
        user is in ``group_dn`` if configured); raises ApiError 401 otherwise."""
        import ldap3
        from ldap3.utils.conv import escape_filter_chars
        if not password:
            raise ApiError("LDAP authorization failed", 401)
        server = ldap3.Server(self.host, port=self.port, use_ssl=self.secure,
                              connect_timeout=10)
        try:
            with ldap3.Connection(server, self.bind_dn, self.bind_password,
                                  auto_bind=True, receive_timeout=10) as conn:
                flt = self.user_filter.replace("USERNAME", escape_filter_chars(username))
                attrs = ["memberOf"] if self.active_directory else []
                conn.search(self.base_dn, flt, attributes=attrs)
                if not conn.entries:
                    raise ApiError("LDAP authorization failed", 401)
                entry = conn.entries[0]
                user_dn = entry.entry_dn
                if self.group_dn and not self._in_group(conn, entry, user_dn, username):
                    raise ApiError("LDAP authorization failed", 401)
            with ldap3.Connection(server, user_dn, password, auto_bind=True,
                                  receive_timeout=10):
                pass
        except ApiError:
            raise
        except ldap3.core.exceptions.LDAPException as err:
            log.info("LDAP login of %s failed: %s", username, err)
            raise ApiError("LDAP authorization failed", 401) from None

    def _in_group(self, conn: Any, entry: Any, user_dn: str, username: str) -> bool:
        from ldap3.utils.conv import escape_filter_chars
        if self.active_directory:
            groups = entry.memberOf.values if "memberOf" in entry else []
            return any(g.lower() == self.group_dn.lower() for g in groups)
        flt = ("(|(member={dn})(uniqueMember={dn})(memberUid={uid}))".format(
            dn=escape_filter_chars(user_dn), uid=escape_filter_chars(username)))
        conn.search(self.group_dn, flt, search_scope="BASE")
        return bool(conn.entries)
