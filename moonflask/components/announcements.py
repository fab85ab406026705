"""Announcements: RSS feeds from moonlight (``[announcements]``).
Spec: web_api.md "Announcement APIs", "Appendix / Announcements",
"Announcement update|dismissed|wake event".

Feeds are ``moonraker``, ``klipper``, the ``subscriptions`` option and feeds
added by API (stored in the database).  Each is fetched from
``https://arksine.github.io/moonlight/assets/FEED.xml`` every 30 minutes
(conditional GET); a feed that cannot be fetched or parsed is logged and
retried next time, its entries kept.  With ``dev_mode: True`` the feeds are
read from ``DATA_PATH/development/announcements/FEED.xml`` instead, where
Moonraker 0.11 reads them (the feed URL can be overridden for tests with
``MOONFLASK_ANNOUNCEMENTS_URL``, ``{feed}`` being the feed name).
Fetched with ``http.client`` (``http_get``), not requests: the memory of an
idle server (issue 11).
``enable_moonlight: False`` fetches nothing (entries stay as they are).

XML is parsed with defusedxml: entity declarations (billion laughs,
external entities) and DTD tricks are refused.  Entries live in the
database namespace ``announcements`` keyed by ``entry_id``; entries that
leave their feed are pruned.
"""
from __future__ import annotations

import email.utils
import logging
import os
import time
from typing import Any

import gevent

from ..api import ApiError

log = logging.getLogger(__name__)


DEFAULT_FEEDS = ("moonraker", "klipper")
FEED_URL = "https://arksine.github.io/moonlight/assets/{feed}.xml"
UPDATE_INTERVAL = 1800.0    # seconds
FETCH_TIMEOUT = 10.0
MAX_FEED_SIZE = 1 << 20     # bytes
MAX_DESCRIPTION = 512
ENTRIES_NS = "announcements"
META_NS = "moonraker"
FEEDS_KEY = "announcements.stored_feeds"


def devel_path(data_path: str) -> str:
    """Where dev_mode reads ``FEED.xml`` files:
    ``DATA_PATH/development/announcements`` (Moonraker 0.11's location)."""
    return os.path.join(data_path, "development", "announcements")


class FeedError(Exception):
    """A feed could not be fetched or parsed."""


MAX_REDIRECTS = 5


def http_get(url: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    """GET ``url`` (http or https; redirects followed, up to MAX_REDIRECTS)
    with ``http.client``, FETCH_TIMEOUT seconds for the connection and
    each read.  Not requests (4 MiB of RSS for the rest of the process's
    life), and TLS only once the TCP connection is made: an offline
    printer never loads OpenSSL (``moonflask.lean.lazy_ssl``).

    Returns: ``(status, headers, body)``; the body (at most
    MAX_FEED_SIZE + 1 bytes) only for a 200.
    Raises: FeedError when the host cannot be reached, TLS fails, or the
    reply is not HTTP."""
    import http.client
    import socket
    from urllib.parse import urljoin, urlsplit
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise FeedError(f"cannot fetch {url!r}")
        tls = parts.scheme == "https"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise FeedError(f"cannot fetch {url!r}") from None
        conn = http.client.HTTPConnection(host, port, timeout=FETCH_TIMEOUT)
        try:
            sock = socket.create_connection((host, port), FETCH_TIMEOUT)
            conn.sock = sock
            if tls:
                import ssl
                conn.sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            conn.putrequest("GET", parts.path + (f"?{parts.query}" if parts.query else "")
                            or "/", skip_host=True, skip_accept_encoding=True)
            name = f"[{host}]" if ":" in host else host
            conn.putheader("Host", f"{name}:{parts.port}" if parts.port else name)
            conn.putheader("User-Agent", "moonflask")
            conn.putheader("Connection", "close")
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            resp = conn.getresponse()
            location = resp.getheader("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            body = resp.read(MAX_FEED_SIZE + 1) if resp.status == 200 else b""
            return resp.status, resp.headers, body
        except (OSError, http.client.HTTPException) as err:
            raise FeedError(f"{url}: {err.__class__.__name__}: {err}") from None
        finally:
            conn.close()
    raise FeedError(f"{url}: more than {MAX_REDIRECTS} redirects")


def parse_feed(content: bytes, feed: str) -> list[dict[str, Any]]:
    """The entries of one moonlight RSS document.

    Returns: entry dicts (without the dismiss fields).
    Raises: FeedError for malformed XML, forbidden constructs (entity
    declarations, external references) or a missing channel.
    """
    # loaded on first use (0.7 MiB with xml.etree): an idle server parses nothing
    from defusedxml import DefusedXmlException
    from defusedxml import ElementTree as SafeET
    try:
        root = SafeET.fromstring(content, forbid_dtd=True)
    except (DefusedXmlException, SafeET.ParseError, ValueError) as err:
        raise FeedError(f"refused XML: {err.__class__.__name__}: {err}") from None
    channel = root.find("channel")
    if root.tag != "rss" or channel is None:
        raise FeedError("not an RSS document")
    entries = []
    for item in channel.findall("item"):
        def text(tag: str) -> str:
            el = item.find(tag)
            return (el.text or "").strip() if el is not None else ""
        guid = text("guid")
        if not guid:
            continue
        try:
            date = int(email.utils.parsedate_to_datetime(text("pubDate")).timestamp())
        except (TypeError, ValueError):
            date = 0
        entries.append({
            "entry_id": guid, "url": text("link"), "title": text("title"),
            "description": text("description")[:MAX_DESCRIPTION],
            "priority": "high" if text("category").lower() in ("high", "critical") else "normal",
            "date": date, "source": "moonlight", "feed": feed,
        })
    return entries


class Announcements:
    """The announcements component.

    Args:
        server: the :class:`moonflask.app.Server`.
        config: the ``[announcements]`` section or None.
    """

    def __init__(self, server: Any, config: Any) -> None:
        self.server = server
        self.enable_moonlight = bool(config.getboolean("enable_moonlight", True)) \
            if config is not None else True
        self.dev_mode = bool(config.getboolean("dev_mode", False)) if config is not None else False
        subs = config.getlist("subscriptions", []) if config is not None else []
        self.config_feeds = list(DEFAULT_FEEDS)
        for name in subs:
            for part in name.replace(",", " ").split():
                if part.lower() not in self.config_feeds:
                    self.config_feeds.append(part.lower())
        self.entries_db = server.database.namespace(ENTRIES_NS)
        self.meta = server.database.namespace(META_NS)
        self.stored_feeds: list[str] = list(self.meta.get(FEEDS_KEY, None) or [])
        self.entries: dict[str, dict[str, Any]] = {}
        moved: list[str] = []
        for key, entry in self.entries_db.items():
            if not isinstance(entry, dict):
                continue
            entry_id = str(entry.get("entry_id") or key)
            self.entries[entry_id] = entry
            if key != entry_id:     # Moonraker keys its entries "000001", ...
                moved.append(key)
        if moved:                   # kept by entry_id here, dismissed state and all
            self.entries_db.insert_batch({e["entry_id"]: e for e in self.entries.values()
                                          if "entry_id" in e})
            self.entries_db.delete_batch(moved)
        self._validators: dict[str, tuple[str | None, str | None]] = {}
        self._wakers: dict[str, gevent.Greenlet] = {}
        now = time.time()
        for entry in self.entries.values():
            if entry.get("dismiss_wake"):
                self._schedule_wake(entry["entry_id"], entry["dismiss_wake"] - now)
        self._worker = None
        server.events.on("server:started", self._start)
        server.events.on("server:shutdown", self._stop)

    # -- lifetime ---------------------------------------------------------
    def _start(self) -> None:
        if self._worker is None:
            from ..workers import announcements as refresher
            self._worker = self.server.workers.start("announcements", refresher.run, self)

    def _stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    # -- feeds ------------------------------------------------------------
    def feeds(self) -> list[str]:
        """Every subscribed feed: configured first, then added by API."""
        return self.config_feeds + [f for f in self.stored_feeds if f not in self.config_feeds]

    def _fetch(self, feed: str) -> bytes | None:
        """The feed's XML, or None when unchanged (HTTP 304)."""
        if self.dev_mode:
            path = os.path.join(devel_path(self.server.data_path), f"{feed}.xml")
            try:
                with open(path, "rb") as fh:
                    return fh.read(MAX_FEED_SIZE + 1)
            except OSError as err:
                raise FeedError(f"cannot read {path}: {err.strerror}") from None
        if not self.enable_moonlight:  # no fetch from moonlight: entries stay as they are
            return None
        url = os.environ.get("MOONFLASK_ANNOUNCEMENTS_URL", FEED_URL).format(feed=feed)
        headers = {}
        etag, modified = self._validators.get(feed, (None, None))
        if etag:
            headers["If-None-Match"] = etag
        if modified:
            headers["If-Modified-Since"] = modified
        status, resp_headers, data = http_get(url, headers)
        if status == 304:
            return None
        if status != 200:
            raise FeedError(f"HTTP {status} from {url}")
        self._validators[feed] = (resp_headers.get("ETag"), resp_headers.get("Last-Modified"))
        return data

    def _update_feed(self, feed: str) -> bool:
        """Refresh one feed; returns True when entries changed."""
        try:
            data = self._fetch(feed)
            if data is None:
                return False
            if len(data) > MAX_FEED_SIZE:
                raise FeedError("feed larger than 1 MiB")
            fresh = parse_feed(data, feed)
        except FeedError as err:
            log.info("Failed to update subscription '%s': %s", feed, err)
            self._validators.pop(feed, None)
            return False
        changed = False
        ids = set()
        for entry in fresh:
            ids.add(entry["entry_id"])
            old = self.entries.get(entry["entry_id"])
            new = dict(entry, dismissed=False, date_dismissed=None, dismiss_wake=None)
            if old is not None:
                for key in ("dismissed", "date_dismissed", "dismiss_wake"):
                    new[key] = old.get(key, new[key])
            if old != new:
                self.entries[new["entry_id"]] = new
                self.entries_db.insert(new["entry_id"], new)
                changed = True
        for entry_id in [k for k, v in self.entries.items()
                         if v.get("feed") == feed and k not in ids]:
            self._remove(entry_id)
            changed = True
        return changed

    def _remove(self, entry_id: str) -> None:
        self.entries.pop(entry_id, None)
        self.entries_db.pop(entry_id, None)
        waker = self._wakers.pop(entry_id, None)
        if waker is not None:
            waker.kill(block=False)

    def update(self) -> bool:
        """Refresh every feed; notifies and returns True when anything changed."""
        changed = False
        for feed in self.feeds():
            changed = self._update_feed(feed) or changed
        if changed:
            self.server.events.notify("notify_announcement_update",
                                      [{"entries": self.list_entries(True)}])
        return changed

    def add_feed(self, name: str) -> dict[str, Any]:
        """server.announcements.post_feed."""
        name = name.strip().lower()
        if not name:
            raise ApiError("Feed name cannot be empty", 400)
        if name in self.feeds():
            return {"feed": name, "action": "skipped"}
        self.stored_feeds.append(name)
        self.meta.insert(FEEDS_KEY, list(self.stored_feeds))
        gevent.spawn(self._refresh_one, name)
        return {"feed": name, "action": "added"}

    def _refresh_one(self, name: str) -> None:
        if self._update_feed(name):
            self.server.events.notify("notify_announcement_update",
                                      [{"entries": self.list_entries(True)}])

    def remove_feed(self, name: str) -> dict[str, Any]:
        """server.announcements.delete_feed (API-added feeds only)."""
        name = name.strip().lower()
        if name not in self.stored_feeds or name in self.config_feeds:
            raise ApiError(f"Feed '{name}' not stored", 400)
        self.stored_feeds.remove(name)
        self.meta.insert(FEEDS_KEY, list(self.stored_feeds))
        gone = [k for k, v in self.entries.items() if v.get("feed") == name]
        for entry_id in gone:
            self._remove(entry_id)
        if gone:
            self.server.events.notify("notify_announcement_update",
                                      [{"entries": self.list_entries(True)}])
        return {"feed": name, "action": "removed"}

    # -- entries ----------------------------------------------------------
    def list_entries(self, include_dismissed: bool) -> list[dict[str, Any]]:
        """Entries newest first."""
        out = [dict(e) for e in self.entries.values()
               if include_dismissed or not e.get("dismissed")]
        out.sort(key=lambda e: e.get("date", 0), reverse=True)
        return out

    def dismiss(self, entry_id: str, wake_time: float | None) -> dict[str, Any]:
        """Dismiss an entry, optionally until ``wake_time`` seconds from now."""
        entry = self.entries.get(entry_id)
        if entry is None:
            raise ApiError(f"No key matching entry id: {entry_id}", 400)
        now = time.time()
        entry["dismissed"] = True
        entry["date_dismissed"] = now
        entry["dismiss_wake"] = now + wake_time if wake_time else None
        self.entries_db.insert(entry_id, entry)
        old = self._wakers.pop(entry_id, None)
        if old is not None:
            old.kill(block=False)
        if wake_time:
            self._schedule_wake(entry_id, wake_time)
        self.server.events.notify("notify_announcement_dismissed", [{"entry_id": entry_id}])
        return {"entry_id": entry_id}

    def _schedule_wake(self, entry_id: str, delay: float) -> None:
        self._wakers[entry_id] = gevent.spawn_later(max(delay, 0.0), self._wake, entry_id)

    def _wake(self, entry_id: str) -> None:
        self._wakers.pop(entry_id, None)
        entry = self.entries.get(entry_id)
        if entry is None or not entry.get("dismissed"):
            return
        entry.update(dismissed=False, date_dismissed=None, dismiss_wake=None)
        self.entries_db.insert(entry_id, entry)
        self.server.events.notify("notify_announcement_wake", [{"entry_id": entry_id}])


def load_component(server: Any, config: Any) -> Announcements:
    """Create the announcements component (always loaded)."""
    if config is None and server.config.has_section("announcements"):
        config = server.config.section("announcements")
    return Announcements(server, config)
