"""Authorization: who may call what.  Spec: web_api.md "Authorization".

Every transport asks this module, never decides itself:
- ``authenticate_request(request, public) -> user | None`` for every HTTP
  request, before routing (raises ApiError 401 for credentials that are
  presented but invalid, and for a request without credentials from an
  untrusted address unless its path is public);
- ``authenticate_http(request, endpoint) -> user | None`` for each HTTP call
  (raises ApiError 401 when the endpoint needs credentials it lacks);
- ``authenticate_websocket(request) -> user | None`` and
  ``websocket_credentials(request) -> (user | None, refused)`` at upgrade time;
- ``connection_authenticated(conn) -> bool``: may ``conn`` receive notifications;
- ``check_connection(conn, endpoint) -> user | None`` for each JSON-RPC call
  on a persistent connection;
- ``require_user(user, endpoint)`` for JSON-RPC over HTTP;
- ``identify(conn, access_token, api_key)`` for ``server.connection.identify``;
- ``install(app)`` adds CORS handling (incl. preflight) and the websocket
  Origin check to the Flask app.

:class:`Authorization` is always in force, as in Moonraker 0.11.0 (without an
``[authorization]`` section every option takes its default: nobody trusted).
It implements Moonraker's rules:

- credentials, checked in this order: a oneshot token (``?token=``, 5 s,
  single use), the API key (``X-Api-Key`` header), a JSON Web Token
  (``Authorization: Bearer`` header or ``?access_token=``), then the client's
  address against ``trusted_clients`` (IPv4/IPv6 addresses, CIDR ranges,
  hostnames resolved to addresses).  A credential that is presented but
  invalid is a 401 on every HTTP path, public ones included, from a trusted
  address too (front ends refresh their token on that 401); a blank one
  counts as none (KlipperScreen sends ``X-Api-Key: ""`` when it has no key);
- ``force_logins``: once a user exists, trusted addresses no longer count;
- users live in the database namespace ``authorized_users`` (forbidden to
  clients), passwords hashed with Argon2id (argon2-cffi); Moonraker's legacy
  PBKDF2-SHA256 hashes (imported databases) are accepted and upgraded at the
  next successful login;
- JWTs are HS256, signed with a per-user random secret (``jwt_secret``), so a
  token signed with another user's secret, or a deleted or logged-out user's
  token, fails.  Access tokens live 1 h, refresh tokens ``login_timeout`` days;
  the EdDSA tokens Moonraker 0.11 issued (an imported user's ``jwt_secret`` is
  its Ed25519 seed) stay valid until they expire (``ed25519.py``), so a
  switch from Moonraker logs nobody out;
- repeated failed logins from one address are slowed down (exponential delay,
  per address, capped at ``MAX_LOGIN_DELAY`` seconds);
- login source ``ldap`` through ldap3 when an ``[ldap]`` section exists.
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import socket
import time
import uuid
from typing import Any, Iterable

import gevent
import gevent.event
import gevent.lock

from ... import lean
lean.lazy_module("jwt")  # PyJWT runs on the first login or token check (0.7 MiB, ssl)
import jwt  # noqa: E402

from ...api import ApiError, UNIX, INTERNAL
from .ed25519 import decode_moonraker_jwt

log = logging.getLogger(__name__)

USERS_NAMESPACE = "authorized_users"
TRUSTED_USER = "_TRUSTED_USER_"
API_KEY_USER = "_API_KEY_USER_"
RESERVED_USERS = (TRUSTED_USER, API_KEY_USER)
ACCESS_TOKEN_LIFETIME = 3600.0          # seconds
ONESHOT_TOKEN_LIFETIME = 5.0            # seconds
JWT_ALGORITHM = "HS256"
JWT_AUDIENCE = "Moonraker"
LOGIN_DELAY_BASE = 0.25                 # seconds after the first failure, doubling
MAX_LOGIN_DELAY = 8.0                   # seconds
FAILURE_MEMORY = 900.0                  # seconds without attempts before an address is forgiven
HOSTNAME_REFRESH = 300.0                # seconds between re-resolving trusted hostnames
HOSTNAME_RETRY = 5.0                    # seconds before a name that did not resolve is retried
HOSTNAME_WAIT = 10.0                    # seconds a request waits for a first resolution
LOOPBACK = ("127.0.0.1/32", "::1/128")  # what "localhost" names resolve to (RFC 6761 6.3)

CORS_ALLOW_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
CORS_ALLOW_HEADERS = ("Origin, Accept, Content-Type, X-Requested-With, X-CRSF-Token, "
                      "Authorization, X-Access-Token, X-Api-Key")

UNAUTHORIZED = "Unauthorized"


def _jwt_alg(token: str) -> str | None:
    """The ``alg`` of ``token``'s (unverified) header, or None."""
    try:
        return jwt.get_unverified_header(token).get("alg")
    except jwt.PyJWTError:
        return None


def _unauthorized(message: str = UNAUTHORIZED) -> ApiError:
    return ApiError(message, 401)


# -- password hashing -----------------------------------------------------------
_hasher = None


def _argon2():
    global _hasher
    if _hasher is None:
        from argon2 import PasswordHasher
        # OWASP's Argon2id minimum (19 MiB, 2 passes, 1 lane): ~50 ms here,
        # affordable on a Raspberry Pi where RFC 9106's 64 MiB x 4 lanes is not.
        _hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
    return _hasher


def _in_thread(fn, *args):
    """Run CPU-heavy ``fn(*args)`` in gevent's threadpool (hashing releases
    the GIL), so the hub keeps serving other greenlets."""
    return gevent.get_hub().threadpool.apply(fn, args)


def hash_password(password: str) -> str:
    """An Argon2id hash string (``$argon2id$...``) of ``password``; ~50 ms of
    CPU, run off the hub."""
    return _in_thread(_argon2().hash, password)


def _legacy_hash(password: str, salt_hex: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt_hex),
                               100000).hex()


def verify_password(record: dict, password: str) -> bool:
    """True when ``password`` matches the user ``record``'s stored hash:
    Argon2 (``$argon2...``) or Moonraker's PBKDF2-SHA256 (hex hash + hex ``salt``)."""
    stored = record.get("password") or ""
    if stored.startswith("$argon2"):
        def check() -> bool:
            from argon2.exceptions import VerificationError, InvalidHashError
            try:
                return _argon2().verify(stored, password)
            except (VerificationError, InvalidHashError):
                return False
        return bool(_in_thread(check))
    salt = record.get("salt") or ""
    if not stored or not salt:
        return False
    try:
        computed = _in_thread(_legacy_hash, password, salt)
    except ValueError:
        return False
    return hmac.compare_digest(computed, stored)


# -- trusted clients and CORS ----------------------------------------------------
class TrustedClients:
    """``trusted_clients``: addresses, CIDR ranges and hostnames.

    Args:
        entries: the configured items (``192.168.1.0/24``, ``::1``,
            ``printer.local``, ``10.0.0.5``).
    Hostnames are resolved to their addresses when first needed, then again
    every HOSTNAME_REFRESH seconds in the background; a name that does not
    resolve (a resolver not answering yet on a fresh or busy machine) keeps
    the addresses it had, is logged once and is tried again after
    HOSTNAME_RETRY seconds.  ``localhost`` and ``*.localhost`` are the
    loopback networks, never resolved (RFC 6761).
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: list[ipaddress._BaseNetwork] = []
        self.hostnames: list[str] = []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            if name == "localhost" or name.endswith(".localhost"):
                self.networks.extend(ipaddress.ip_network(n) for n in LOOPBACK)
            elif re.fullmatch(r"[A-Za-z0-9.\-_]+", entry):
                self.hostnames.append(entry.lower())
            else:
                log.warning("[authorization]: invalid trusted_clients entry %r", entry)
        self._resolved: set[ipaddress._BaseAddress] = set()
        self._by_name: dict[str, set[ipaddress._BaseAddress]] = {}
        self._failed: set[str] = set()          # names whose failure was logged
        self._next_refresh = 0.0                # time.monotonic() of the next resolution
        self._resolving: gevent.event.Event | None = None
        self._verdicts: dict[str, bool] = {}     # ip -> contains(ip); cleared on each resolution
        self._verdicts_at = 0.0

    def _refresh(self) -> None:
        """Resolve the hostnames when due: in the caller's greenlet while a
        name has never resolved (concurrent callers wait for that one
        resolution, at most HOSTNAME_WAIT seconds), else in the background."""
        if not self.hostnames:
            return
        pending = self._resolving
        if pending is not None:
            if len(self._by_name) < len(self.hostnames):
                pending.wait(HOSTNAME_WAIT)
            return
        if time.monotonic() < self._next_refresh:
            return
        if len(self._by_name) < len(self.hostnames):
            self._resolve()
        else:
            self._resolving = gevent.event.Event()
            gevent.spawn(self._resolve)

    def _resolve(self) -> None:
        done = self._resolving = self._resolving or gevent.event.Event()
        failed = False
        try:
            for name in self.hostnames:
                try:
                    addrs = {ipaddress.ip_address(info[4][0].split("%")[0])
                             for info in socket.getaddrinfo(name, None)}
                except (OSError, ValueError) as err:
                    failed = True
                    if name not in self._failed:
                        self._failed.add(name)
                        log.warning("trusted client %s does not resolve (tried again every "
                                    "%.0f s): %s", name, HOSTNAME_RETRY, err)
                    continue
                if name in self._failed:
                    self._failed.discard(name)
                    log.info("trusted client %s resolves: %s", name,
                             ", ".join(sorted(map(str, addrs))))
                self._by_name[name] = addrs
            self._resolved = set().union(*self._by_name.values())
            self._verdicts = {}
        finally:
            self._next_refresh = time.monotonic() + (HOSTNAME_RETRY if failed
                                                     else HOSTNAME_REFRESH)
            self._resolving = None
            done.set()

    def contains(self, ip: str | None) -> bool:
        """True when the address ``ip`` is trusted (IPv4-mapped IPv6 addresses
        are matched as IPv4).  Verdicts are remembered for HOSTNAME_REFRESH
        seconds (every broadcast asks, for every connection)."""
        if not ip:
            return False
        now = time.monotonic()
        if now - self._verdicts_at > HOSTNAME_REFRESH or len(self._verdicts) > 4096:
            self._verdicts = {}
            self._verdicts_at = now
        verdict = self._verdicts.get(ip)
        if verdict is None:
            verdict = self._contains(ip)
            if len(self._by_name) == len(self.hostnames):   # every name resolved once
                self._verdicts[ip] = verdict
        return verdict

    def _contains(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        for net in self.networks:
            if addr.version == net.version and addr in net:
                return True
        self._refresh()
        return addr in self._resolved


def compile_cors(domains: Iterable[str]) -> list[re.Pattern]:
    """``cors_domains`` patterns as regular expressions: ``*`` matches any
    run of characters (``*.home``, ``*://localhost:*``), matching is
    case-insensitive on the whole Origin."""
    out = []
    for dom in domains:
        dom = dom.strip().rstrip("/")
        if dom:
            out.append(re.compile(fnmatch.translate(dom.lower())))
    return out


# -- the [authorization] policy ------------------------------------------------
class Authorization:
    """Moonraker's ``[authorization]`` component.

    Args:
        server: the :class:`moonflask.app.Server` (``server.database`` is
            looked up lazily: the database component loads after this).
        section: the ``[authorization]`` ConfigSection.
    Raises:
        ConfigError: a bad option (``default_source`` unknown, ...).
    """

    def __init__(self, server: Any, section: Any) -> None:
        self.server = server
        self.login_timeout = section.getint("login_timeout", 90, minval=1)   # days
        self.force_logins = section.getboolean("force_logins", False)
        self.enable_api_key = section.getboolean("enable_api_key", True)
        self.max_login_attempts = section.getint("max_login_attempts", None)
        self.trusted = TrustedClients(section.getlist("trusted_clients", []))
        self.cors_domains = section.getlist("cors_domains", [])
        self.cors = compile_cors(self.cors_domains)
        self.ldap = None
        sources = ["moonraker"]
        if server.config.has_section("ldap"):
            from ..ldap import LdapSource
            self.ldap = LdapSource(server.config.section("ldap"))
            sources.append("ldap")
        self.available_sources = sources
        self.default_source = section.get("default_source", "moonraker")
        if self.default_source not in ("moonraker", "ldap"):
            from ...config import ConfigError
            raise ConfigError(f"[authorization]: invalid default_source "
                              f"'{self.default_source}'")
        self._users: dict[str, dict] | None = None
        self._oneshot: dict[str, tuple[dict, float]] = {}
        self._failures: dict[str, list[float]] = {}       # ip -> [count, next_allowed, last]
        self._login_locks: dict[str, gevent.lock.Semaphore] = {}
        self._trusted_user = {"username": TRUSTED_USER, "source": "moonraker",
                              "created_on": time.time()}
        self.issuer = f"http://{socket.gethostname()}:{server.port}"

    # -- storage ------------------------------------------------------------
    def _ns(self) -> Any:
        db = getattr(self.server, "database", None)
        if db is None:
            raise ApiError("Database not available", 503)
        return db.namespace(USERS_NAMESPACE)

    @property
    def users(self) -> dict[str, dict]:
        """Every stored record by name (including ``_API_KEY_USER_``),
        cached after the first read."""
        if self._users is None:
            self._users = {k: dict(v) for k, v in self._ns().items() if isinstance(v, dict)}
        return self._users

    def _save(self, record: dict) -> None:
        self._ns().insert(record["username"], record)
        self.users[record["username"]] = record

    def _remove(self, username: str) -> None:
        self._ns().delete(username)
        self.users.pop(username, None)

    def real_users(self) -> list[dict]:
        """Registered (non-reserved) users."""
        return [u for n, u in self.users.items() if n not in RESERVED_USERS]

    @property
    def api_key(self) -> str:
        """The current API key, created on first use."""
        rec = self.users.get(API_KEY_USER)
        key = rec and (rec.get("api_key") or rec.get("password"))
        if not key:
            key = self.new_api_key()
        return key

    def new_api_key(self) -> str:
        """Generate, store and return a new API key (32 hex characters)."""
        old = self.users.get(API_KEY_USER) or {}
        key = uuid.uuid4().hex
        self._save({"username": API_KEY_USER, "api_key": key, "source": "moonraker",
                    "created_on": old.get("created_on", time.time())})
        return key

    def api_key_user(self) -> dict:
        """The user record representing API-key clients."""
        self.api_key  # noqa: B018  (creates the key)
        rec = self.users[API_KEY_USER]
        return {"username": API_KEY_USER, "source": "moonraker",
                "created_on": rec.get("created_on", 0.0)}

    # -- tokens ---------------------------------------------------------------
    def _user_secret(self, record: dict) -> str:
        secret = record.get("jwt_secret")
        if not secret:
            record = dict(record, jwt_secret=secrets.token_hex(32),
                          jwk_id=secrets.token_urlsafe(32))
            self._save(record)
            secret = record["jwt_secret"]
        return secret

    def issue_token(self, record: dict, token_type: str = "access") -> str:
        """A signed JWT for ``record`` (``token_type`` ``access``: 1 h,
        ``refresh``: login_timeout days)."""
        secret = self._user_secret(record)
        record = self.users[record["username"]]
        now = int(time.time())
        life = (ACCESS_TOKEN_LIFETIME if token_type == "access"
                else self.login_timeout * 86400)
        payload = {"iss": self.issuer, "aud": JWT_AUDIENCE, "iat": now,
                   "exp": now + int(life), "username": record["username"],
                   "token_type": token_type}
        return jwt.encode(payload, secret, algorithm=JWT_ALGORITHM,
                          headers={"kid": record.get("jwk_id") or ""})

    def decode_token(self, token: str, token_type: str = "access") -> dict:
        """The user record a valid ``token`` of ``token_type`` belongs to.

        Raises: ApiError 401 (bad signature, expired, wrong type, unknown or
        logged-out user)."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as err:
            raise _unauthorized(f"Failed to decode JWT: {err}") from None
        username = claims.get("username")
        record = self.users.get(username) if isinstance(username, str) else None
        if record is None or username in RESERVED_USERS:
            raise _unauthorized("Invalid JWT: unknown user")
        secret = record.get("jwt_secret")
        if not secret:
            raise _unauthorized("Invalid JWT: user logged out")
        if _jwt_alg(token) == "EdDSA":     # issued by Moonraker before a switch
            try:
                claims = decode_moonraker_jwt(token, secret, JWT_AUDIENCE)
            except ValueError as err:
                raise _unauthorized(f"Invalid JWT: {err}") from None
            if claims.get("username") != username or claims.get("token_type") != token_type:
                raise _unauthorized(f"JWT is not a {token_type} token")
            return record
        try:
            claims = jwt.decode(token, secret, algorithms=[JWT_ALGORITHM],
                                audience=JWT_AUDIENCE,
                                options={"require": ["exp", "iat", "username", "token_type"]})
        except jwt.ExpiredSignatureError:
            raise _unauthorized("JWT expired") from None
        except jwt.PyJWTError as err:
            raise _unauthorized(f"Invalid JWT: {err}") from None
        if claims.get("token_type") != token_type:
            raise _unauthorized(f"JWT is not a {token_type} token")
        return record

    def new_oneshot(self, user: dict) -> str:
        """A single-use token valid ONESHOT_TOKEN_LIFETIME seconds for ``user``."""
        now = time.monotonic()
        for tok, (_, exp) in list(self._oneshot.items()):
            if exp < now:
                del self._oneshot[tok]
        token = base64.b32encode(secrets.token_bytes(20)).decode()
        self._oneshot[token] = (user, now + ONESHOT_TOKEN_LIFETIME)
        return token

    def _take_oneshot(self, token: str) -> dict | None:
        found = self._oneshot.pop(token, None)
        if found is None or found[1] < time.monotonic():
            return None
        user = found[0]
        if user["username"] not in RESERVED_USERS and user["username"] not in self.users:
            return None
        return user

    # -- credential checks -------------------------------------------------
    @staticmethod
    def public(record: dict) -> dict:
        """``{"username", "source", "created_on"}`` of a user record."""
        return {"username": record["username"], "source": record.get("source", "moonraker"),
                "created_on": record.get("created_on", 0.0)}

    def is_trusted(self, ip: str | None) -> bool:
        """True when ``ip`` is a trusted client and trust counts (no
        force_logins with users present)."""
        if self.force_logins and self.real_users():
            return False
        return self.trusted.contains(ip)

    def _key_matches(self, key: str) -> bool:
        return self.enable_api_key and hmac.compare_digest(
            key.encode("utf-8", "surrogateescape"), self.api_key.encode())

    def _credentials(self, args: Any, headers: Any, ip: str | None,
                     skip_bad_oneshot: bool = False) -> dict | None:
        """The user for a request's query ``args``/``headers``/address, or None.

        Raises ApiError 401 for a credential that is presented but invalid (a
        used or unknown oneshot token, a wrong API key, a JWT that does not
        verify or is not an access token), whatever the address: as in
        Moonraker, a trusted client presenting a wrong key is refused.  Blank
        values (``X-Api-Key: ""``, ``Bearer ``, ``?token=``) count as absent.
        ``skip_bad_oneshot``: an invalid oneshot token is ignored instead (the
        websocket upgrade, as the reference: a client reconnecting with the
        URL of its last connection keeps its address's trust)."""
        token = (args.get("token") or "").strip()
        if token:
            user = self._take_oneshot(token)
            if user is not None:
                return user
            if not skip_bad_oneshot:
                raise _unauthorized()
        key = (headers.get("X-Api-Key") or "").strip()
        if key:
            if self._key_matches(key):
                return self.api_key_user()
            raise _unauthorized()
        auth = headers.get("Authorization", "")
        bearer = None
        if auth.lower().startswith("bearer "):
            bearer = auth[7:].strip()
        bearer = bearer or (args.get("access_token") or "").strip()
        if bearer:
            try:
                return self.public(self.decode_token(bearer, "access"))
            except ApiError:
                raise _unauthorized() from None
        if self.is_trusted(ip):
            return dict(self._trusted_user)
        return None

    def authenticate_request(self, request: Any, public: bool) -> dict | None:
        """Authentication before routing (Moonraker's order): the user of an
        HTTP request whatever its path and verb, so that an anonymous caller
        cannot tell which endpoints exist.

        Args:
            request: ``args``, ``headers``, ``remote_addr`` (a Flask request).
            public: the path is one an anonymous caller may reach
                (``/access/login``, ``/access/info``, ``/access/refresh_jwt``,
                ``POST /server/jsonrpc``, whose methods are checked one by one).
        Returns: the user, or None (no credentials, untrusted, public path).
        Raises: ApiError 401 "Unauthorized" for invalid credentials (any
        path), or for no credentials from an untrusted address on a path
        that is not public (unknown paths and wrong verbs included).
        """
        user = self._credentials(request.args, request.headers, request.remote_addr)
        if user is None and not public:
            raise _unauthorized()
        return user

    def authenticate_http(self, request: Any, endpoint: Any) -> dict | None:
        """The user of an HTTP request (``request``: ``args``, ``headers``,
        ``remote_addr``, as a Flask request has them).

        Args:
            endpoint: the Endpoint (None for ``POST /server/jsonrpc``, whose
                methods are checked one by one with :meth:`require_user`).
        Raises: ApiError 401 "Unauthorized" when the endpoint needs a user
        and the request has none, or carries wrong credentials.
        """
        return self.authenticate_request(request, not (endpoint is not None and endpoint.auth))

    def authenticate_websocket(self, request: Any) -> dict | None:
        """The user of a websocket upgrade (oneshot token, access_token,
        API key or JWT header, trusted address); None lets the client connect
        unauthenticated: it may then log in or identify with credentials."""
        return self.websocket_credentials(request)[0]

    def websocket_credentials(self, request: Any) -> tuple[dict | None, bool]:
        """``(user, refused)`` for a websocket upgrade.  The upgrade always
        succeeds, as in Moonraker; ``refused`` is True when the upgrade
        presented invalid credentials: the connection is then not trusted
        by its address either (:meth:`check_connection`) until it logs in or
        identifies with valid ones.  A used or unknown oneshot token is
        ignored here, as in the reference."""
        try:
            return self._credentials(request.args, request.headers, request.remote_addr,
                                     skip_bad_oneshot=True), False
        except ApiError:
            return None, True

    def connection_authenticated(self, conn: Any) -> bool:
        """True when ``conn`` may receive notifications: unix-socket and
        internal connections, a logged-in/identified user, or a trusted
        address that presented no invalid credentials.  An untrusted
        websocket that has not authenticated receives nothing, as in
        Moonraker."""
        if conn.user is not None or conn.transport in (UNIX, INTERNAL):
            return True
        if getattr(conn, "credentials_refused", False):
            return False
        return self.is_trusted(conn.ip)

    def check_connection(self, conn: Any, endpoint: Any) -> dict | None:
        """The user for a JSON-RPC call on ``conn``; raises ApiError 401 when
        ``endpoint`` needs one and the connection has none.  Unix-socket and
        internal connections are trusted (file-system permissions guard them)."""
        user = conn.user
        if user is not None:
            name = user.get("username")
            if name in RESERVED_USERS or name in self.users:
                return user
            conn.user = user = None          # deleted meanwhile
        if conn.transport in (UNIX, INTERNAL):
            return dict(self._trusted_user)
        if self.is_trusted(conn.ip) and not getattr(conn, "credentials_refused", False):
            return dict(self._trusted_user)
        if endpoint is not None and endpoint.auth:
            raise _unauthorized()
        return None

    def require_user(self, user: dict | None, endpoint: Any) -> None:
        """Raise ApiError 401 when ``endpoint`` needs a user and ``user`` is None."""
        if user is None and endpoint is not None and endpoint.auth:
            raise _unauthorized()

    def identify(self, conn: Any, access_token: str | None, api_key: str | None) -> None:
        """Authenticate ``conn`` from ``server.connection.identify`` arguments
        (``access_token`` wins over ``api_key``).  Raises ApiError 401."""
        if access_token:
            conn.user = self.public(self.decode_token(access_token, "access"))
        elif api_key and str(api_key).strip():
            if not self._key_matches(str(api_key).strip()):
                raise _unauthorized("Invalid API Key")
            conn.user = self.api_key_user()

    # -- origin checks ---------------------------------------------------------
    def cors_allowed(self, origin: str | None) -> bool:
        """True when a cross-origin HTTP request from the page at ``origin``
        is answered with CORS headers.  As in Moonraker, only when
        ``cors_domains`` is configured: ``origin`` matches one of its
        patterns, or its host is an IP address in ``trusted_clients``
        (Mainsail or Fluidd served on their own port of a trusted machine:
        ``http://192.168.1.20:8080``)."""
        if not origin or not self.cors:
            return False
        low = origin.lower().rstrip("/")
        if any(p.match(low) for p in self.cors):
            return True
        from urllib.parse import urlsplit
        try:
            parts = urlsplit(low)
            host = parts.hostname or ""
        except ValueError:
            return False
        if parts.scheme not in ("http", "https"):
            return False
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False                       # a hostname: cors_domains only
        return self.trusted.contains(host)

    def websocket_origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Moonraker's Origin check for websocket upgrades: no Origin, the
        server's own origin (``host``: the request's Host header), a
        ``cors_domains`` match or an origin whose host is a trusted client
        address."""
        if not origin:
            return True
        if self.cors_allowed(origin):
            return True
        from urllib.parse import urlsplit
        try:
            parts = urlsplit(origin)
            origin_host = parts.hostname or ""
        except ValueError:
            return False
        if parts.netloc and parts.netloc.lower() == (host or "").lower():
            return True
        return self.trusted.contains(origin_host)

    # -- login throttling --------------------------------------------------
    def _throttle(self, ip: str) -> gevent.lock.Semaphore:
        now = time.monotonic()
        for addr, (_, _, last) in list(self._failures.items()):
            if now - last > FAILURE_MEMORY:
                del self._failures[addr]
                self._login_locks.pop(addr, None)
        return self._login_locks.setdefault(ip, gevent.lock.Semaphore())

    def _login_failed(self, ip: str) -> None:
        now = time.monotonic()
        count = self._failures.get(ip, [0, 0.0, 0.0])[0] + 1
        delay = min(LOGIN_DELAY_BASE * 2 ** (count - 1), MAX_LOGIN_DELAY)
        self._failures[ip] = [count, now + delay, now]

    # -- actions (called by blueprints/access.py) ----------------------------
    def login(self, username: str, password: str, source: str | None,
              ip: str | None, conn: Any = None) -> dict:
        """Check credentials and return ``{"username", "token", "refresh_token",
        "action": "user_logged_in", "source"}``; sets ``conn.user`` on a
        persistent connection.  Failures from one address are serialized
        and delayed exponentially.  Raises ApiError 400 (unknown user, bad
        password), 401 (ldap unavailable or rejected)."""
        source = source or self.default_source
        if source not in ("moonraker", "ldap"):
            raise ApiError(f"Invalid 'source' argument: {source}", 400)
        if source == "ldap" and self.ldap is None:
            raise _unauthorized("LDAP authentication not available")
        key = ip or "-"
        with self._throttle(key):
            state = self._failures.get(key)
            if state is not None:
                wait = state[1] - time.monotonic()
                if wait > 0:
                    gevent.sleep(wait)
            if self.max_login_attempts and state and state[0] >= self.max_login_attempts:
                self._login_failed(key)
                raise _unauthorized("Too many failed login attempts")
            try:
                record = self._check_login(username, password, source)
            except ApiError:
                self._login_failed(key)
                raise
            self._failures.pop(key, None)
        token = self.issue_token(record, "access")
        refresh = self.issue_token(self.users[username], "refresh")
        if conn is not None:
            conn.user = self.public(self.users[username])
        return {"username": username, "token": token, "refresh_token": refresh,
                "action": "user_logged_in", "source": record.get("source", "moonraker")}

    def _check_login(self, username: str, password: str, source: str) -> dict:
        if username in RESERVED_USERS:
            raise ApiError(f"Invalid Request for user {username}", 400)
        record = self.users.get(username)
        if source == "ldap":
            self.ldap.authenticate(username, password)          # raises 401
            if record is None:
                record = {"username": username, "password": None, "source": "ldap",
                          "created_on": time.time()}
                self._save(record)
                self.server.events.notify("notify_user_created", [{"username": username}])
            return record
        if record is None:
            raise ApiError(f"Unregistered User: {username}", 400)
        if record.get("source", "moonraker") != "moonraker":
            raise ApiError("Invalid Password", 400)
        if not verify_password(record, password):
            raise ApiError("Invalid Password", 400)
        if not str(record.get("password", "")).startswith("$argon2"):
            record = dict(record, password=hash_password(password))
            record.pop("salt", None)
            self._save(record)
        return record

    def create_user(self, username: str, password: str) -> dict:
        """Register a ``moonraker`` user; returns the login result with
        ``action`` ``user_created``.  Raises ApiError 400."""
        if username in RESERVED_USERS or not username:
            raise ApiError(f"Invalid Request for user {username}", 400)
        if username in self.users:
            raise ApiError(f"User {username} already exists", 400)
        record = {"username": username, "password": hash_password(password),
                  "source": "moonraker", "created_on": time.time(),
                  "jwt_secret": secrets.token_hex(32), "jwk_id": secrets.token_urlsafe(32),
                  "groups": ["admin"]}
        if username in self.users:            # created while hashing
            raise ApiError(f"User {username} already exists", 400)
        self._save(record)
        token = self.issue_token(record, "access")
        refresh = self.issue_token(record, "refresh")
        self.server.events.notify("notify_user_created", [{"username": username}])
        return {"username": username, "token": token, "refresh_token": refresh,
                "source": "moonraker", "action": "user_created"}

    def delete_user(self, username: str, current: dict | None) -> dict:
        """Delete ``username`` (not the caller itself); its tokens and
        websockets lose their authentication.  Raises ApiError 400."""
        if current is not None and current.get("username") == username:
            raise ApiError(f"Cannot delete logged in user {username}", 400)
        if username in RESERVED_USERS or username not in self.users:
            raise ApiError(f"No registered user: {username}", 400)
        self._remove(username)
        self._drop_sessions(username)
        self.server.events.notify("notify_user_deleted", [{"username": username}])
        return {"username": username, "action": "user_deleted"}

    def logout(self, user: dict | None, conn: Any = None) -> dict:
        """Invalidate every token of ``user`` (its secret is dropped) and
        unauthenticate its websockets.  Raises ApiError 400 for the trusted
        and API-key users."""
        name = (user or {}).get("username")
        if name is None or name in RESERVED_USERS or name not in self.users:
            raise ApiError(f"Invalid log out request for user {name}", 400)
        record = dict(self.users[name])
        record["jwt_secret"] = None
        record["jwk_id"] = None
        self._save(record)
        self._drop_sessions(name)
        self.server.events.notify("notify_user_logged_out", [{"username": name}])
        return {"username": name, "action": "user_logged_out"}

    def _drop_sessions(self, username: str) -> None:
        for conn in self.server.connections.all():
            if conn.user and conn.user.get("username") == username:
                conn.user = None
        for tok, (user, _) in list(self._oneshot.items()):
            if user.get("username") == username:
                del self._oneshot[tok]

    def reset_password(self, user: dict | None, password: str, new_password: str) -> dict:
        """Change the caller's password.  Raises ApiError 400."""
        name = (user or {}).get("username")
        record = self.users.get(name) if name else None
        if record is None or name in RESERVED_USERS or \
                record.get("source", "moonraker") != "moonraker":
            raise ApiError(f"Invalid Reset Request for user {name}", 400)
        if not verify_password(record, password):
            raise ApiError("Invalid Password", 400)
        record = dict(self.users[name], password=hash_password(new_password))
        record.pop("salt", None)
        self._save(record)
        return {"username": name, "action": "user_password_reset"}

    def refresh(self, refresh_token: str) -> dict:
        """A new access token for a valid refresh token.  Raises ApiError 401
        "Invalid Refresh Token"."""
        try:
            record = self.decode_token(refresh_token, "refresh")
        except ApiError:
            raise _unauthorized("Invalid Refresh Token") from None
        return {"username": record["username"], "token": self.issue_token(record, "access"),
                "source": record.get("source", "moonraker"), "action": "user_jwt_refresh"}


def load_authorization(server: Any) -> "Authorization":
    """The authorization policy for ``server``'s configuration.

    As in Moonraker 0.11.0, authorization is always in force: without an
    ``[authorization]`` section every option takes its default, so no client
    is trusted and HTTP/websocket callers need a token or the API key (the
    unix socket needs none).  ``make run`` writes a section trusting local
    networks."""
    return Authorization(server, server.config.section("authorization"))
