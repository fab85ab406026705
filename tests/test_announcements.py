"""Issue 5: announcements from RSS feeds served by a local HTTP server, from
dev_mode files, and a malicious feed refused."""
from __future__ import annotations

import http.server
import os
import threading
import time

import pytest

from shapes import reference, shape_diff

ITEM = """<item>
  <title>{title}</title>
  <link>https://github.com/Arksine/moonlight/issues/{n}</link>
  <description>{desc}</description>
  <pubDate>{date}</pubDate>
  <category>{prio}</category>
  <guid>arksine/moonlight/issue/{n}</guid>
</item>"""


def rss(*items: str) -> bytes:
    return ("<?xml version='1.0' encoding='utf-8'?>\n"
            '<rss version="2.0" xmlns:moonlight="https://arksine.github.io/moonlight">'
            "<channel><title>arksine/moonlight</title>"
            "<link>https://github.com/Arksine/moonlight</link>"
            "<description>RSS Announcements for Moonraker</description>"
            "<pubDate>Tue, 22 Mar 2022 23:19:04 GMT</pubDate>"
            + "".join(items) + "</channel></rss>").encode()


def item(n: int, prio: str = "normal", date: str = "Wed, 09 Mar 2022 19:37:58 GMT") -> str:
    return ITEM.format(n=n, title=f"Announcement {n}", desc=f"Description {n} " + "x" * 600,
                       date=date, prio=prio)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<rss version="2.0"><channel><title>&lol9;</title>
<item><title>&lol9;</title><guid>evil/1</guid><pubDate>Wed, 09 Mar 2022 19:37:58 GMT</pubDate>
</item></channel></rss>"""


class FeedServer:
    """Serves ``/FEED.xml`` from a dict with an ETag (304 when the client's
    If-None-Match matches); unknown feeds are 404; counts hits."""

    def __init__(self) -> None:
        self.feeds: dict[str, bytes] = {}
        self.hits: list[str] = []
        self.not_modified: list[str] = []   # feeds answered 304 (conditional GET)
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path.startswith("/moved/"):      # a feed that moved
                    self.send_response(301)
                    self.send_header("Location", self.path[len("/moved"):])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                name = self.path.strip("/").removesuffix(".xml")
                srv.hits.append(name)
                body = srv.feeds.get(name)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = f'"{len(body)}-{hash(body) & 0xffffffff:x}"'
                if self.headers.get("If-None-Match") == etag:
                    srv.not_modified.append(name)
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def feeds():
    fs = FeedServer()
    fs.feeds["moonraker"] = rss(item(1), item(2, "high", "Wed, 16 Mar 2022 19:33:39 GMT"))
    fs.feeds["klipper"] = rss()
    yield fs
    fs.httpd.shutdown()


@pytest.fixture(scope="module")
def srv(start_server, feeds):
    os.environ["MOONFLASK_ANNOUNCEMENTS_URL"] = feeds.url + "/{feed}.xml"
    try:
        yield start_server(config="[announcements]\nsubscriptions:\n  evil\n")
    finally:
        del os.environ["MOONFLASK_ANNOUNCEMENTS_URL"]


def wait_entries(srv, count, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = srv.result("GET", "/server/announcements/list")["entries"]
        if len(entries) == count:
            return entries
        time.sleep(0.2)
    raise AssertionError(entries)


def test_feed_fetched_at_start(srv, feeds):
    entries = wait_entries(srv, 2)
    assert [e["entry_id"] for e in entries] == ["arksine/moonlight/issue/2",
                                                "arksine/moonlight/issue/1"]
    e2 = entries[0]
    assert e2["priority"] == "high" and e2["date"] == 1647459219
    assert e2["feed"] == "moonraker" and e2["source"] == "moonlight"
    assert len(e2["description"]) == 512
    assert (e2["dismissed"], e2["date_dismissed"], e2["dismiss_wake"]) == (False, None, None)
    got = srv.get("/server/announcements/list").json()
    assert got["result"]["feeds"] == ["moonraker", "klipper", "evil"]
    assert shape_diff(reference("jobs_http_announcements.list")["body"],
                      {"result": dict(got["result"], entries=[])}) == []
    deadline = time.monotonic() + 10
    while not {"moonraker", "klipper", "evil"} <= set(feeds.hits):
        assert time.monotonic() < deadline, feeds.hits
        time.sleep(0.1)


def test_update_adds_and_prunes(srv, feeds):
    ws = srv.ws()
    feeds.feeds["moonraker"] = rss(item(2, "high", "Wed, 16 Mar 2022 19:33:39 GMT"), item(3))
    res = srv.result("POST", "/server/announcements/update")
    assert res["modified"] is True
    assert sorted(e["entry_id"][-1] for e in res["entries"]) == ["2", "3"]
    note = ws.wait_notification("notify_announcement_update")
    assert [e["entry_id"] for e in note["params"][0]["entries"]] == [
        e["entry_id"] for e in res["entries"]]
    fetched = len(feeds.not_modified)
    again = srv.result("POST", "/server/announcements/update")
    assert again["modified"] is False
    # the unchanged feed was asked conditionally (its ETag) and answered 304
    assert "moonraker" in feeds.not_modified[fetched:]
    assert sorted(e["entry_id"][-1] for e in again["entries"]) == ["2", "3"]
    assert shape_diff(reference("jobs_http_announcements.update")["body"]["result"],
                      dict(again, entries=[])) == []


def test_fetch_follows_redirects_and_reports_failures(feeds):
    """announcements.http_get (http.client, no requests) in this process."""
    from moonflask.components.announcements import FeedError, http_get
    status, headers, body = http_get(feeds.url + "/moved/moonraker.xml", {})
    assert (status, body) == (200, feeds.feeds["moonraker"])
    status, _h, _b = http_get(feeds.url + "/moonraker.xml",
                              {"If-None-Match": headers["ETag"]})
    assert status == 304
    assert http_get(feeds.url + "/nothing.xml", {})[0] == 404
    with pytest.raises(FeedError):
        http_get("http://127.0.0.1:1/x.xml", {})       # nothing listens
    with pytest.raises(FeedError):
        http_get("ftp://example.invalid/x.xml", {})


def test_unreachable_feed_is_not_fatal(srv, feeds):
    feeds.feeds.pop("klipper")
    res = srv.result("POST", "/server/announcements/update")
    assert res["modified"] is False and len(res["entries"]) == 2
    feeds.feeds["klipper"] = rss()


def test_billion_laughs_refused(srv, feeds):
    feeds.feeds["evil"] = BILLION_LAUGHS
    t0 = time.monotonic()
    res = srv.result("POST", "/server/announcements/update")
    assert time.monotonic() - t0 < 10
    assert all(not e["entry_id"].startswith("evil") for e in res["entries"])
    assert srv.get("/server/info").status_code == 200
    with open(srv.log_path) as fh:
        assert "Failed to update subscription 'evil'" in fh.read()


def test_dismiss_and_wake(srv):
    ws = srv.ws()
    entry_id = "arksine/moonlight/issue/3"
    assert srv.result("POST", "/server/announcements/dismiss",
                      params={"entry_id": entry_id, "wake_time": 2}) == {"entry_id": entry_id}
    assert ws.wait_notification("notify_announcement_dismissed")["params"] == [
        {"entry_id": entry_id}]
    hidden = srv.result("GET", "/server/announcements/list?include_dismissed=false")
    assert entry_id not in [e["entry_id"] for e in hidden["entries"]]
    entry = [e for e in srv.result("GET", "/server/announcements/list")["entries"]
             if e["entry_id"] == entry_id][0]
    assert entry["dismissed"] is True and entry["dismiss_wake"] > entry["date_dismissed"]
    assert ws.wait_notification("notify_announcement_wake", timeout=20)["params"] == [
        {"entry_id": entry_id}]
    entry = [e for e in srv.result("GET", "/server/announcements/list")["entries"]
             if e["entry_id"] == entry_id][0]
    assert entry["dismissed"] is False
    ref = reference("jobs_http_announcements.dismiss.unknown")
    resp = srv.post("/server/announcements/dismiss?entry_id=a%2Fb%2Fissue%2F1")
    assert (resp.status_code, resp.json()["error"]["message"]) == (
        ref["status"], ref["body"]["error"]["message"])
    # indefinitely dismissed entries stay dismissed across updates
    srv.result("POST", "/server/announcements/dismiss", params={"entry_id": entry_id})
    srv.result("POST", "/server/announcements/update")
    entry = [e for e in srv.result("GET", "/server/announcements/list")["entries"]
             if e["entry_id"] == entry_id][0]
    assert entry["dismissed"] is True and entry["dismiss_wake"] is None


def test_feeds_added_and_removed(srv, feeds):
    feeds.feeds["my_feed"] = rss(ITEM.format(n=9, title="Mine", desc="d", prio="normal",
                                             date="Wed, 23 Mar 2022 19:37:58 GMT")
                                 .replace("arksine/moonlight/issue/9", "me/mine/issue/9"))
    for fixture, method, path in [
            ("post_feed", "POST", "/server/announcements/feed?name=my_feed"),
            ("post_feed.again", "POST", "/server/announcements/feed?name=my_feed"),
            ("post_feed.missing", "POST", "/server/announcements/feed")]:
        ref = reference("jobs_http_announcements." + fixture)
        resp = srv.post(path)
        assert resp.status_code == ref["status"]
        if ref["status"] == 200:
            assert resp.json() == ref["body"]
        else:
            assert resp.json()["error"]["message"] == ref["body"]["error"]["message"]
    assert srv.result("GET", "/server/announcements/feeds")["feeds"] == [
        "moonraker", "klipper", "evil", "my_feed"]
    wait_entries(srv, 3)
    ref = reference("jobs_http_announcements.delete_feed.builtin")
    resp = srv.delete("/server/announcements/feed?name=moonraker")
    assert (resp.status_code, resp.json()["error"]["message"]) == (
        ref["status"], ref["body"]["error"]["message"])
    assert srv.result("DELETE", "/server/announcements/feed?name=my_feed") == \
        reference("jobs_http_announcements.delete_feed")["body"]["result"]
    assert len(srv.result("GET", "/server/announcements/list")["entries"]) == 2


def test_dev_mode_reads_the_reference_folder(start_server, tmp_path):
    """Issue 10 item 7, compared with the reference given the same files
    (announcements_dev_mode_list, scripts/capture_args_db_config_reference.py).
    The reference lists only the last feed's entry (it drops the others); moonflask
    lists each feed's, the reference's one identical."""
    from capture_args_db_config_reference import DEV_FEEDS, write_dev_feeds
    data = str(tmp_path / "pd_ref")
    write_dev_feeds(data)
    srv = start_server(config="[announcements]\ndev_mode: True\n", data_path=data)
    ref = reference("announcements_dev_mode_list")["body"]["result"]
    entries = wait_entries(srv, len(DEV_FEEDS))
    got = srv.result("GET", "/server/announcements/list")
    assert got["feeds"] == ref["feeds"]
    assert {e["feed"] for e in entries} == set(DEV_FEEDS)
    for ref_entry in ref["entries"]:
        assert ref_entry in got["entries"]
    srv.stop()


def test_dev_mode_files(start_server, tmp_path, printer_data):
    """Issue 10 item 7: dev_mode reads DATA_PATH/development/announcements/FEED.xml,
    where the reference reads them."""
    devel = tmp_path / "pd" / "development" / "announcements"
    devel.mkdir(parents=True)
    (devel / "moonraker.xml").write_bytes(rss(item(5)))
    (devel / "klipper.xml").write_bytes(rss(item(6, "high")))
    other = start_server(config="[announcements]\ndev_mode: True\n",
                         data_path=str(tmp_path / "pd"))
    entries = wait_entries(other, 2)
    assert {e["feed"] for e in entries} == {"moonraker", "klipper"}
    (devel / "klipper.xml").write_bytes(rss())
    res = other.result("POST", "/server/announcements/update")
    assert res["modified"] is True
    assert [e["entry_id"] for e in res["entries"]] == ["arksine/moonlight/issue/5"]
