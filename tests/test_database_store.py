"""The LMDB storage layer (moonflask/database.py) and its Moonraker SQLite
import/backup (moonflask/database_migrate.py): real LMDB environments in
temporary folders, real child processes killed with SIGKILL, and (when the
reference is installed) the real Moonraker 0.11 reading a moonflask backup."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from moonflask.api import ApiError  # noqa: E402
from moonflask.components.database.cli import main as db_main  # noqa: E402
from moonflask.components.database.store import Database, DatabaseLocked  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "data", "moonraker-sql.db")
MOONRAKER = os.environ.get("MOONRAKER_BIN", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".reference-venv", "bin", "moonraker"))


@pytest.fixture
def data_path(tmp_path):
    p = tmp_path / "printer_data"
    (p / "database").mkdir(parents=True)
    return str(p)


@pytest.fixture
def db(data_path):
    d = Database(os.path.join(data_path, "database"))
    yield d
    d.close()


def err(fn, *args, **kw) -> tuple[int, str]:
    with pytest.raises(ApiError) as ei:
        fn(*args, **kw)
    return ei.value.status, ei.value.message


# -- items ----------------------------------------------------------------------------
def test_nested_keys_list_keys_and_dots(db):
    assert db.insert_item("fluidd", "a.b", {"x": 1}) == {"x": 1}
    assert db.insert_item("fluidd", ["c", "d.e"], [1, 2]) == [1, 2]
    db.insert_item("fluidd", "s", "hello")
    db.insert_item("fluidd", "n", 5)
    assert db.get_item("fluidd") == {"a": {"b": {"x": 1}}, "c": {"d.e": [1, 2]},
                                     "n": 5, "s": "hello"}
    assert list(db.get_item("fluidd")) == ["a", "c", "n", "s"]     # key order
    assert db.get_item("fluidd", "a.b") == {"x": 1}
    assert db.get_item("fluidd", ["a", "b", "x"]) == 1
    assert db.get_item("fluidd", ["c", "d.e"]) == [1, 2]
    # a parent that is not an object is replaced by one (as Moonraker does)
    db.insert_item("fluidd", "s.x", 1)
    assert db.get_item("fluidd", "s") == {"x": 1}
    db.insert_item("fluidd", "c.d.e", 3)
    assert db.get_item("fluidd", "c") == {"d.e": [1, 2], "d": {"e": 3}}
    # every JSON type survives, including non-BMP text and nested nulls
    value = {"f": 1.5e300, "t": True, "no": False, "z": None, "u": "h\u00e9\U0001F600",
             "big": 2 ** 70, "l": [None, {"a": []}]}
    db.insert_item("fluidd", "all", value)
    assert db.get_item("fluidd", "all") == value
    # a top-level null is stored (Moonraker silently drops it)
    db.insert_item("fluidd", "nul", None)
    assert db.get_item("fluidd", "nul") is None


def test_missing_and_invalid_keys(db):
    db.insert_item("fluidd", "a.b", {"x": 1})
    db.insert_item("fluidd", "s", "str")
    assert err(db.get_item, "nons") == (404, "Namespace nons not found")
    assert err(db.get_item, "nons", "a.zz") == (404, "Key 'a' in namespace 'nons' not found")
    assert err(db.get_item, "fluidd", "zz.yy") == (404, "Key 'zz' in namespace 'fluidd' not found")
    assert err(db.get_item, "fluidd", "a.zz") == (404, "Key 'a.zz' in namespace 'fluidd' not found")
    assert err(db.get_item, "fluidd", "a.b.x.y") == (
        404, "Key 'a.b.x.y' in namespace 'fluidd' not found")
    assert err(db.get_item, "fluidd", "s.x") == (404, "Key 's.x' in namespace 'fluidd' not found")
    assert err(db.get_item, "fluidd", ["a", "zz"]) == (
        404, "Key '['a', 'zz']' in namespace 'fluidd' not found")
    assert err(db.get_item, "nope", ["c", "zz"]) == (404, "Key 'c' in namespace 'nope' not found")
    for bad, shown in (("", "''"), ("a..b", "'a..b'"), ("a.", "'a.'"), ([], "'[]'"),
                       ([""], "'['']'"), (["a", ""], "'['a', '']'")):
        assert err(db.get_item, "fluidd", bad) == (400, f"Invalid Key Format: {shown}")
        assert err(db.insert_item, "fluidd", bad, 1) == (400, f"Invalid Key Format: {shown}")
        assert err(db.delete_item, "fluidd", bad) == (400, f"Invalid Key Format: {shown}")
    assert err(db.get_item, "fluidd", 5) == (
        400, "Value for argument 'key' is an invalid type: int")
    assert err(db.insert_item, "fluidd", "big", 12345678901234567890) == (
        400, "Error encoding val: 12345678901234567890, type: <class 'int'>")
    assert err(db.insert_item, "fluidd", "obj", object())[0] == 400
    assert db.get_item("fluidd", "zz", default=7) == 7
    assert db.get_item("nons", default=None) is None


def test_delete_and_namespace_drop(db):
    db.insert_item("aaa", "x", 1)
    db.insert_item("bbb", "x", {"y": {"z": 1}})
    db.insert_item("bbb", "w", 2)
    assert db.list_namespaces() == ["aaa", "bbb"]
    assert db.delete_item("aaa", "x") == 1
    assert db.list_namespaces() == ["bbb"]
    assert err(db.get_item, "aaa") == (404, "Namespace aaa not found")
    # a nested delete leaves the (now empty) parents
    assert db.delete_item("bbb", "x.y.z") == 1
    assert db.get_item("bbb", "x") == {"y": {}}
    assert err(db.delete_item, "bbb", "x.y.z") == (
        404, "Key 'x.y.z' in namespace 'bbb' not found")
    assert err(db.delete_item, "bbb", "zz") == (404, "Key 'zz' in namespace 'bbb' not found")
    assert err(db.delete_item, "nope", "a") == (404, "Key 'a' in namespace 'nope' not found")
    assert db.delete_item("bbb", ["x"]) == {"y": {}}
    assert db.delete_item("bbb", "w") == 2
    assert db.list_namespaces() == []
    # the namespace can be created again after being dropped
    db.insert_item("bbb", "again", True)
    assert db.get_item("bbb") == {"again": True}
    # registered namespaces stay (empty) like Moonraker's component namespaces
    ns = db.namespace("announcements")
    assert db.get_item("announcements") == {}
    ns.insert("e1", {"a": 1})
    ns.delete("e1")
    assert "announcements" in db.list_namespaces()
    assert db.get_item("announcements") == {}


def test_update_batch_and_helpers(db):
    db.insert_item("ns", "cfg", {"a": 1, "b": {"c": 2}})
    assert db.update_item("ns", "cfg", {"b": 3, "d": 4}) == {"a": 1, "b": 3, "d": 4}
    assert db.update_item("ns", "cfg.a", 9) == 9
    assert err(db.update_item, "ns", "cfg.zz", 1)[0] == 404
    assert err(db.update_item, "ns", "zz", 1) == (404, "Key 'zz' in namespace 'ns' not found")
    db.insert_batch("ns", {"k1": 1, "k.2": [2], "k3": "3"})
    assert db.ns_keys("ns") == ["cfg", "k.2", "k1", "k3"]
    assert db.ns_length("ns") == 4
    assert db.get_batch("ns", ["k.2", "nope", "k3"]) == {"k.2": [2], "k3": "3"}
    assert db.delete_batch("ns", ["k1", "nope", "k3"]) == {"k1": 1, "k3": "3"}
    assert db.ns_keys("nope") == [] and db.ns_length("nope") == 0
    assert err(db.insert_batch, "ns", {"a": 1, "b": 2 ** 64})[0] == 400
    assert "a" not in db.ns_keys("ns")          # nothing stored from a failed batch
    db.clear_namespace("ns")
    assert "ns" not in db.list_namespaces()
    # empty namespace name and very long keys work (Moonraker allows both)
    db.insert_item("", "zz", 1)
    assert db.get_item("", "zz") == 1
    long_key = "k" * 700
    db.insert_item("long", long_key, {"v": 1})
    db.insert_item("long", [long_key, "w"], 2)
    assert db.get_item("long", long_key) == {"v": 1, "w": 2}
    assert db.ns_keys("long") == [long_key]
    assert db.get_item("long") == {long_key: {"v": 1, "w": 2}}
    assert db.delete_item("long", long_key) == {"v": 1, "w": 2}
    assert "long" not in db.list_namespaces()


def test_namespace_wrapper(db):
    meta = db.namespace("moonraker")                 # dotted keys nest
    meta.insert("history.job_totals", {"total_jobs": 1})
    assert db.get_item("moonraker", "history") == {"job_totals": {"total_jobs": 1}}
    assert meta.get("history.job_totals") == {"total_jobs": 1}
    assert meta.get("history.nope", "dflt") == "dflt"
    assert meta.pop("history.current_job") is None
    md = db.namespace("gcode_metadata")              # file paths are literal keys
    md.insert("sub/benchy.gcode", {"size": 1})
    md["cube.gcode"] = {"size": 2}
    assert db.ns_keys("gcode_metadata") == ["cube.gcode", "sub/benchy.gcode"]
    assert md.get("cube.gcode") == {"size": 2} and md["cube.gcode"] == {"size": 2}
    assert "cube.gcode" in md and "nope.gcode" not in md
    assert md.get(["cube.gcode", "size"]) == 2       # list keys still nest
    assert md.items() == [("cube.gcode", {"size": 2}), ("sub/benchy.gcode", {"size": 1})]
    assert md.values() == [{"size": 2}, {"size": 1}] and len(md) == 2
    assert list(md) == ["cube.gcode", "sub/benchy.gcode"]
    with pytest.raises(KeyError):
        md["nope.gcode"]
    with pytest.raises(KeyError):
        del md["nope.gcode"]
    assert md.delete("cube.gcode") == {"size": 2}
    assert err(md.delete, "cube.gcode")[0] == 404
    users = db.namespace("authorized_users")
    users.insert("john.doe", {"username": "john.doe"})
    assert db.ns_keys("authorized_users") == ["john.doe"]
    # values are copies
    v = md.get("sub/benchy.gcode")
    v["size"] = 99
    assert md.get("sub/benchy.gcode") == {"size": 1}
    assert db.namespace("gcode_metadata") is md


def test_client_policy(db):
    db.insert_item("moonraker", "instance_id", "abc")
    db.namespace("authorized_users").insert("alice", {"username": "alice"})
    db.insert_item("fluidd", "x", 1)
    for ns in ("moonraker", "gcode_metadata", "announcements"):
        db.check_client_access(ns, write=False)
        assert err(db.check_client_access, ns, write=True) == (
            403, f"Write access to namespace '{ns}' is forbidden")
    for write in (False, True):
        assert err(db.check_client_access, "database", write=write) == (
            403, "Read/Write access to namespace 'database' is forbidden")
        for ns in ("authorized_users", "history"):     # moonflask's own stores
            assert err(db.check_client_access, ns, write=write) == (
                404, f"Namespace {ns} not found")
    db.check_client_access("update_manager", write=True)  # only with [update_manager]
    db.protect_namespace("update_manager")
    assert err(db.check_client_access, "update_manager", write=True)[0] == 403
    db.check_client_access("fluidd", write=True)
    db.check_client_access("Moonraker", write=True)     # case-sensitive, as Moonraker
    assert db.list_namespaces() == ["authorized_users", "fluidd", "moonraker"]
    assert db.list_namespaces(client=True) == ["fluidd", "moonraker"]
    db.namespace("job_queue", protected=True)
    assert err(db.check_client_access, "job_queue", write=True)[0] == 403
    db.namespace("secret_stuff", forbidden=True)
    assert "secret_stuff" not in db.list_namespaces(client=True)


def test_growth_of_map_and_dbs(tmp_path):
    path = str(tmp_path / "db")
    with Database(path, map_size=64 * 1024, max_dbs=4) as db:
        blob = "x" * 20000
        for i in range(100):
            db.insert_item(f"ns{i:03d}", "k", {"i": i, "blob": blob if i % 10 == 0 else ""})
        assert len(db.list_namespaces()) == 100
        assert db.stats()["max_dbs"] > 4 and db.stats()["map_size"] > 64 * 1024
        assert db.get_item("ns050", "k.i") == 50
    with Database(path, map_size=64 * 1024, max_dbs=4) as db:
        assert all(db.get_item(f"ns{i:03d}", "k.i") == i for i in range(100))


# -- import of a real Moonraker database --------------------------------------------
def test_import_moonraker_sqlite(data_path):
    shutil.copy(FIXTURE, os.path.join(data_path, "database", "moonraker-sql.db"))
    with Database(os.path.join(data_path, "database")) as db:
        info = db.migration_info()
        assert info and "fluidd" in info["namespaces"]
        assert db.get_item("fluidd", "a.b") == {"x": 1}
        assert db.get_item("fluidd", ["c", "d.e"]) == [1, 2]
        assert db.get_item("fluidd", "uiSettings.general.instanceName") == "Test Printer"
        assert [db.get_item("fluidd", k) for k in ("int", "neg", "float", "yes", "no", "str",
                                                   "empty", "list")] == \
            [42, -7, 1.5, True, False, "h\u00e9llo", "", ["a", {"b": None}]]
        assert db.get_item("mainsail", "general.printername") == "Voron"
        assert "database" not in db.list_namespaces()
        users = db.get_item("authorized_users")
        alice = users["alice"]
        assert alice["source"] == "moonraker" and alice["groups"] == ["admin"]
        assert len(alice["password"]) == 64 and len(alice["salt"]) == 64
        api = users["_API_KEY_USER_"]
        conn = sqlite3.connect(FIXTURE)
        (key,) = conn.execute("SELECT password FROM authorized_users "
                              "WHERE username='_API_KEY_USER_'").fetchone()
        conn.close()
        assert api["api_key"] == key and len(key) == 32
        cams = db.get_item("webcams")
        assert len(cams) == 1
        (cam,) = cams.values()
        assert cam["name"] == "front" and cam["urlStream"] == "/webcam/?action=stream"
        assert cam["targetFps"] == 20
        jobs = db.get_item("history")
        assert sorted(jobs) == ["000001", "000002"]
        assert jobs["000001"]["filename"] == "benchy.gcode"
        assert jobs["000001"]["status"] == "completed"
        assert jobs["000001"]["metadata"]["slicer"] == "PrusaSlicer"
        assert jobs["000002"]["user"] == "_TRUSTED_USER_"
        totals = db.get_item("moonraker", "history.job_totals")
        assert totals == {"total_jobs": 2, "total_time": 3699.75, "total_print_time": 3590.0,
                          "total_filament_used": 4333.75, "longest_job": 3599.75,
                          "longest_print": 3500.0}
        assert len(db.get_item("moonraker", "instance_id")) == 32
        # the import runs once: an emptied database is not re-imported
        for ns in db.list_namespaces():
            db.drop_namespace(ns)
    with Database(os.path.join(data_path, "database")) as db:
        assert db.list_namespaces() == []


def test_import_moonraker_auxiliary_totals(data_path, tmp_path):
    """Sensor history fields' totals (rows of other providers in Moonraker's
    job_totals table, as the reference wrote them:
    tests/reference/sensor_totals_db_job_totals.json) become the history's
    auxiliary_totals, shown as the reference shows them, and go back to the
    same rows in a backup."""
    ref_dir = os.path.join(ROOT, "tests", "reference")
    with open(os.path.join(ref_dir, "sensor_totals_db_job_totals.json")) as f:
        rows = [r for r in json.load(f)["body"] if r["provider"] != "history"]
    with open(os.path.join(ref_dir, "sensor_totals_totals_restart.json")) as f:
        shown = json.load(f)["body"]["result"]["auxiliary_totals"]
    target = os.path.join(data_path, "database", "moonraker-sql.db")
    shutil.copy(FIXTURE, target)
    conn = sqlite3.connect(target)
    conn.executemany("INSERT INTO job_totals (provider, field, maximum, total, instance_id) "
                     "VALUES (:provider, :field, :maximum, :total, :instance_id)", rows)
    conn.commit()
    conn.close()
    with Database(os.path.join(data_path, "database")) as db:
        aux = db.get_item("moonraker", "history.auxiliary_totals")
        assert aux == shown
        assert db.get_item("moonraker", "history.job_totals")["total_jobs"] == 2
        out = str(tmp_path / "backup.db")
        db.backup(out)
    conn = sqlite3.connect(out)
    back = conn.execute("SELECT provider, field, maximum, total, instance_id FROM job_totals "
                        "WHERE provider != 'history' ORDER BY rowid").fetchall()
    conn.close()
    assert back == [tuple(r[k] for k in ("provider", "field", "maximum", "total",
                                         "instance_id")) for r in rows]


# -- backup / restore -------------------------------------------------------------
def _populate(db: Database) -> None:
    shutil.copy(FIXTURE, os.path.join(db.path, "import.db"))
    db.restore(os.path.join(db.path, "import.db"))
    db.insert_item("fluidd", "nul", None)                       # not storable by Moonraker
    db.insert_item("fluidd", "k" * 700, {"deep": {"x.y": [1, 2.5, "s"]}})
    db.namespace("authorized_users").insert("bob.smith", {
        "username": "bob.smith", "password": "$argon2id$v=19$m=65536,t=3,p=4$abc$def",
        "created_on": 1.5, "source": "moonraker", "jwt_secret": None, "jwk_id": None,
        "groups": ["admin"]})                                      # no salt: extras table
    db.namespace("history").insert("000003", {
        "job_id": "000003", "user": "bob.smith", "filename": "x.gcode", "status": "in_progress",
        "start_time": 1.0, "end_time": None, "print_duration": 0.0, "total_duration": 0.0,
        "filament_used": 0.0, "metadata": {}, "auxiliary_data": [], "exists": True})
    db.namespace("history").insert("notajob", {"anything": 1})
    db.namespace("moonraker").insert("history.current_job", "000003")
    db.insert_item("gcode_metadata", "sub/a b.gcode", {"size": 1, "modified": 2.0})


def test_backup_restore_round_trip(data_path, tmp_path):
    with Database(os.path.join(data_path, "database"), import_moonraker=False) as db:
        _populate(db)
        before = db.export_all()
    out = str(tmp_path / "backups" / "b.db")
    assert db_main(["backup", data_path, out]) == 0
    assert os.path.isfile(out) and not [f for f in os.listdir(os.path.dirname(out))
                                        if f.startswith(".tmp")]
    # the file is a Moonraker-schema SQLite database
    conn = sqlite3.connect(out)
    tables = {r[0] for r in conn.execute("SELECT name FROM table_registry")}
    assert tables == {"namespace_store", "authorized_users", "job_history", "job_totals"}
    assert conn.execute("SELECT count(*) FROM job_history").fetchone()[0] == 3
    assert conn.execute("SELECT password FROM authorized_users WHERE "
                        "username='_API_KEY_USER_'").fetchone()[0] == \
        before["authorized_users"]["_API_KEY_USER_"]["api_key"]
    conn.close()
    fresh = str(tmp_path / "fresh")
    proc = subprocess.run([sys.executable, "-m", "moonflask.components.database", "restore", fresh, out],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with Database(os.path.join(fresh, "database")) as db:
        assert db.export_all() == before
    # restore replaces everything, and refuses while the database is open
    with Database(os.path.join(fresh, "database")) as db:
        db.insert_item("extra", "x", 1)
        assert db_main(["restore", fresh, out]) == 2
        with pytest.raises(DatabaseLocked):
            Database(os.path.join(fresh, "database"), exclusive=True)
    assert db_main(["restore", fresh, out]) == 0
    with Database(os.path.join(fresh, "database")) as db:
        assert db.export_all() == before
        assert "extra" not in db.list_namespaces()
    # garbage is refused and changes nothing
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database" * 100)
    assert db_main(["restore", fresh, str(bad)]) == 1
    with Database(os.path.join(fresh, "database")) as db:
        assert db.export_all() == before
    # backup names as Moonraker's server.database.post_backup accepts them
    with Database(os.path.join(fresh, "database")) as db:
        assert err(db.backup_path, "../evil.db") == (400, "Invalid name ../evil.db.")
        p = db.backup(db.backup_path())
        assert os.path.basename(p).startswith("sqldb-backup-")
        assert db.list_backups() == [os.path.basename(p)]
        res = db.restore(p)
        assert set(res["restored_tables"]) >= {"namespace_store", "job_history"}
        assert db.export_all() == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not os.path.exists(MOONRAKER), reason="reference Moonraker not installed")
def test_moonraker_reads_our_backup(data_path, tmp_path):
    """Portability the other way: the real Moonraker 0.11 starts on a
    moonflask backup and serves its items, users and history."""
    with Database(os.path.join(data_path, "database"), import_moonraker=False) as db:
        _populate(db)
        db.backup(str(tmp_path / "ref" / "database" / "moonraker-sql.db"))
    port = _free_port()
    ref = tmp_path / "ref"
    (ref / "config").mkdir()
    (ref / "config" / "moonraker.conf").write_text(textwrap.dedent(f"""\
        [server]
        host: 127.0.0.1
        port: {port}
        klippy_uds_address: {ref}/none.sock
        [authorization]
        trusted_clients:
          127.0.0.0/8
        [history]
        """))
    proc = subprocess.Popen([MOONRAKER, "-d", str(ref)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return json.load(r)["result"]
    try:
        for _ in range(150):
            try:
                get("/server/info")
                break
            except OSError:
                time.sleep(0.2)
        assert get("/server/database/item?namespace=fluidd&key=a.b")["value"] == {"x": 1}
        users = {u["username"] for u in get("/access/users/list")["users"]}
        assert {"alice", "bob.smith"} <= users
        jobs = {j["job_id"] for j in get("/server/history/list")["jobs"]}
        assert {"000001", "000002", "000003"} <= jobs
        assert get("/server/history/totals")["job_totals"]["total_jobs"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- crash safety -----------------------------------------------------------------
STORM = textwrap.dedent("""\
    import os, sys
    sys.path.insert(0, %(root)r)
    from moonflask.components.database.store import Database
    db = Database(%(path)r, map_size=256 * 1024, max_dbs=4)
    start = int(sys.argv[1])
    out = os.fdopen(1, "w", buffering=1)
    i = start
    while True:
        db.insert_item("storm", "k%%d" %% i, {"i": i, "pad": "x" * (i %% 997)})
        if i %% 7 == 0:
            db.insert_item("meta", "last.seven", i)
        if i %% 11 == 0:
            ns = "tmp%%d" %% (i %% 13)
            db.insert_item(ns, "x", i)
            db.delete_item(ns, "x")
        if i %% 17 == 0:
            db.insert_batch("batch", {"b%%d" %% i: i, "b%%d.dot" %% i: [i]})
        out.write("%%d\\n" %% i)
        i += 1
""")


def test_crash_storm_sigkill(tmp_path):
    path = str(tmp_path / "db")
    script = tmp_path / "storm.py"
    script.write_text(STORM % {"root": ROOT, "path": path})
    rng = random.Random(1234)
    acked: list[int] = []
    nxt = 0
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(nxt)],
                                stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()      # started: kill within a random window
        assert first, f"round {round_}: the writer died"
        acked.append(int(first))
        deadline = time.monotonic() + rng.uniform(0.1, 1.0)
        got = 1
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
            got += 1
        os.kill(proc.pid, signal.SIGKILL)
        acked.extend(int(x) for x in proc.stdout.read().split())   # written before the kill
        proc.wait()
        assert got > 0, f"round {round_}: no write acknowledged"
        with Database(path) as db:
            storm = db.get_item("storm")
            missing = [i for i in acked if f"k{i}" not in storm]
            assert not missing, f"round {round_}: acknowledged writes lost: {missing[:10]}"
            for i in acked[-50:]:
                assert storm[f"k{i}"] == {"i": i, "pad": "x" * (i % 997)}
            sevens = [i for i in acked if i % 7 == 0]
            if sevens:
                assert db.get_item("meta", "last.seven") >= sevens[-1]
            batch = db.get_item("batch", default={})
            for i in acked:
                if i % 17 == 0:
                    assert batch[f"b{i}"] == i and batch[f"b{i}.dot"] == [i]
            assert not [n for n in db.list_namespaces() if n.startswith("tmp")
                        and db.ns_length(n) == 0]
            db.insert_item("after", "round", round_)              # still writable
            assert db.export_all()["after"] == {"round": round_}
        nxt = max(acked) + 1 if acked else nxt
    assert len(acked) >= 10


GREENLETS = textwrap.dedent("""\
    from gevent import monkey
    monkey.patch_all()
    import sys
    sys.path.insert(0, %(root)r)
    import gevent
    from moonflask.components.database.store import Database
    db = Database(%(path)r, map_size=128 * 1024, max_dbs=4)
    ns = db.namespace("moonraker")

    def worker(n):
        for i in range(10):
            db.insert_item("g%%d" %% (n %% 9), "w%%d.i%%d" %% (n, i), i)
            ns.insert("counter.w%%d" %% n, i)
            assert db.get_item("g%%d" %% (n %% 9), "w%%d.i%%d" %% (n, i)) == i
            gevent.sleep(0)
            assert len(db.get_item("g%%d" %% (n %% 9))) >= 1
        db.delete_item("g%%d" %% (n %% 9), "w%%d" %% n)

    gevent.joinall([gevent.spawn(worker, n) for n in range(30)], raise_error=True)
    assert db.get_item("moonraker", "counter") == {"w%%d" %% n: 9 for n in range(30)}
    assert [n for n in db.list_namespaces() if n.startswith("g")] == []
    print("ok")
""")


def test_gevent_greenlets(tmp_path):
    """Many greenlets writing and reading at once under monkey-patching: no
    deadlock, no reader-slot error, every write kept."""
    script = tmp_path / "greenlets.py"
    script.write_text(GREENLETS % {"root": ROOT, "path": str(tmp_path / "db")})
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_many_namespaces_backup(tmp_path):
    """More namespaces than the initial sub-database table: export, backup and
    restore still see them all."""
    path = str(tmp_path / "db")
    with Database(path, max_dbs=4) as db:
        for i in range(40):
            db.insert_item(f"ns{i:02d}", "k", i)
    with Database(path, max_dbs=4, readonly=True) as db:
        data = db.export_all()
        assert len(data) == 40 and data["ns39"] == {"k": 39}
        db.backup(str(tmp_path / "b.db"))
    with Database(str(tmp_path / "db2"), max_dbs=4) as db:
        db.restore(str(tmp_path / "b.db"))
        assert db.export_all() == data


def test_group_commit_isolates_failing_writes(tmp_path):
    """Concurrent writes share commits; a failing write is rolled back alone."""
    import gevent
    from moonflask.api import ApiError
    db = Database(str(tmp_path / "db"))
    db.insert_item("ns", "keep", 1)
    outcomes: dict = {}

    def good(i: int) -> None:
        outcomes[("good", i)] = db.insert_item("ns", f"item{i}", {"n": i})

    def bad(i: int) -> None:
        try:
            db.delete_item("ns", f"missing{i}")
        except ApiError as err:
            outcomes[("bad", i)] = err.status

    gevent.joinall([gevent.spawn(good if i % 2 else bad, i) for i in range(60)])
    assert all(outcomes[("bad", i)] == 404 for i in range(0, 60, 2))
    assert all(outcomes[("good", i)] == {"n": i} for i in range(1, 60, 2))
    db.close()
    db = Database(str(tmp_path / "db"))
    stored = db.get_item("ns")
    assert stored["keep"] == 1
    assert {k for k in stored if k.startswith("item")} == {f"item{i}" for i in range(1, 60, 2)}
