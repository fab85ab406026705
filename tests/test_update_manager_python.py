"""The ``python`` updater: a package pip-installed in a virtualenv made by
the test, updated from a local package index (a --find-links folder of
wheels built here) and from a git URL (a bare repo with tagged releases)."""
from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile

from shapes import reference, shape_diff
from um_helpers import Origin, status, um_config, update_messages, wait_initialized


def make_wheel(folder: str, name: str, version: str) -> str:
    """A minimal pure-Python wheel of ``name`` ``version`` in ``folder``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'VERSION = "{version}"\n',
        f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                             "Project-URL: Repository, https://github.com/acme/mfdemo\n"
                             "Project-URL: Changelog, https://example.invalid/changes\n"),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    out = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(out, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return out


def make_venv(path: str) -> str:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    path], check=True)
    return os.path.join(path, "bin", "python")


def installed(python: str, name: str) -> str:
    return subprocess.run([python, "-c", f"import {name}; print({name}.VERSION)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_python_from_index(start_server, tmp_root, monkeypatch):
    base = os.path.join(tmp_root, "ump", "index")
    index = os.path.join(base, "index")
    os.makedirs(index)
    for v in ("1.0.0", "1.1.0", "1.2.0b1"):
        make_wheel(index, "mfdemo", v)
    venv = os.path.join(base, "venv")
    python = make_venv(venv)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", index,
                    "mfdemo==1.0.0"], check=True)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", index)
    srv = start_server(config=um_config(
        f"[update_manager mfdemo]\ntype: python\nvirtualenv: {venv}\n"
        "is_system_service: False\n",
        f"[update_manager mfbeta]\ntype: python\nvirtualenv: {venv}\nproject_name: mfdemo\n"
        "channel: beta\nis_system_service: False\n"), data_path=os.path.join(base, "data"))
    wait_initialized(srv)
    vi = status(srv)["version_info"]
    st = vi["mfdemo"]
    assert (st["version"], st["remote_version"], st["configured_type"]) == \
        ("1.0.0", "1.1.0", "python")
    assert st["owner"] == "acme" and st["changelog_url"] == "https://example.invalid/changes"
    assert st["is_valid"] and st["remote_hash"] == "update-available"
    assert vi["mfbeta"]["remote_version"] == "1.2.0b1"
    ref = reference("update_manager_http_status")["body"]["result"]["version_info"]["moonraker"]
    assert shape_diff(ref, st) == [f"$: extra keys {['anomalies']}"]
    ws = srv.ws()
    assert ws.call("machine.update.upgrade", {"name": "mfdemo"}, timeout=120) == "ok"
    msgs = update_messages(ws, timeout=120)
    assert msgs[-1]["message"] == "Python Package mfdemo: Update Finished..."
    assert installed(python, "mfdemo") == "1.1.0"
    st = status(srv, "mfdemo")
    assert (st["version"], st["rollback_version"]) == ("1.1.0", "1.0.0")
    assert srv.result("POST", "/machine/update/rollback", json={"name": "mfdemo"},
                      timeout=120) == "ok"
    assert installed(python, "mfdemo") == "1.0.0" and status(srv, "mfdemo")["version"] == "1.0.0"


BACKEND = """\
# an in-tree PEP 517 build backend: the package needs no build tools
import base64, hashlib, os, zipfile

def _files():
    ns = {}
    exec(open("mfgit/__init__.py").read(), ns)
    return ns["VERSION"], {"mfgit/__init__.py": open("mfgit/__init__.py").read()}

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    version, files = _files()
    dist = "mfgit-%s.dist-info" % version
    files[dist + "/METADATA"] = "Metadata-Version: 2.1\\nName: mfgit\\nVersion: %s\\n" % version
    files[dist + "/WHEEL"] = ("Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\n"
                              "Tag: py3-none-any\\n")
    rec = []
    for path, text in files.items():
        d = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        rec.append("%s,sha256=%s,%d" % (path, d.decode(), len(text.encode())))
    files[dist + "/RECORD"] = "\\n".join(rec + [dist + "/RECORD,,"]) + "\\n"
    name = "mfgit-%s-py3-none-any.whl" % version
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return name
"""


def _pyproject(version: str) -> dict[str, str]:
    return {"pyproject.toml": ("[build-system]\nrequires = []\nbuild-backend = \"backend\"\n"
                               "backend-path = [\".\"]\n"),
            "backend.py": BACKEND, "mfgit/__init__.py": f'VERSION = "{version}"\n'}


def test_python_from_git(start_server, tmp_root, monkeypatch):
    base = os.path.join(tmp_root, "ump", "git")
    origin = Origin(os.path.join(base, "o"))
    origin.commit(_pyproject("1.0.0"), tag="v1.0.0")
    new = origin.commit(_pyproject("1.1.0"), tag="v1.1.0")
    venv = os.path.join(base, "venv")
    python = make_venv(venv)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # pip's spelling of "off"
    subprocess.run([python, "-m", "pip", "install", "-q",
                    f"mfgit @ git+file://localhost{origin.url}@v1.0.0"], check=True)
    srv = start_server(config=um_config(
        f"[update_manager mfgit]\ntype: python\nvirtualenv: {venv}\n"
        "is_system_service: False\n"), data_path=os.path.join(base, "data"))
    wait_initialized(srv, timeout=120)
    st = status(srv, "mfgit")
    assert (st["version"], st["remote_version"], st["remote_hash"]) == ("1.0.0", "1.1.0", new)
    assert st["current_hash"] != "not-specified" and st["is_valid"]
    assert srv.result("POST", "/machine/update/upgrade", json={"name": "mfgit"},
                      timeout=180) == "ok"
    assert installed(python, "mfgit") == "1.1.0"
    st = status(srv, "mfgit")
    assert st["current_hash"] == new and st["rollback_version"] == "1.0.0"
