"""The ``database`` component: the LMDB store and its client API.
Spec: web_api.md "Database APIs", "Debug APIs" (database part).

``load_component`` opens :class:`moonflask.components.database.store.Database` on
``DATA_PATH/database/``, publishes it as ``server.database`` (every other
component stores its state through it) and, on the first start with an empty
database, imports a Moonraker database (``moonraker-sql.db``) found there.

Client rules (as Moonraker 0.11.0 answers them, tests/reference/dbns_*.json):
- ``moonraker``, ``gcode_metadata``, ``announcements`` (and ``update_manager``
  when ``[update_manager]`` is configured) are readable but not writable:
  403 "Write access to namespace 'NS' is forbidden";
- ``database`` is refused: 403 "Read/Write access to namespace 'NS' is
  forbidden";
- moonflask's own stores of what Moonraker keeps in SQL tables
  (``authorized_users``: credentials, ``history``: jobs) do not exist for
  clients: not listed, 404 "Namespace NS not found" (-32601) on any access
  (the rules live in ``Database.check_client_access``);
- a fresh database holds only what the reference's holds
  (``moonraker``, ``gcode_metadata``, ``announcements``); the others
  (``webcams``, a front end's) appear on their first write;
- keys are dotted strings or arrays (items converted to strings), so keys
  containing dots are reachable; an empty key is 400 "Invalid Key Format: ''",
  a key of another type 400 "Value for argument 'key' is an invalid type: T";
- ``debug.database.*`` bypass those rules and exist only with ``-g``.
"""
from __future__ import annotations

import logging
import os
from typing import Any


log = logging.getLogger(__name__)



class DatabaseComponent:
    """What ``server.components["database"]`` holds: the
    :class:`moonflask.components.database.store.Database` (attribute ``db``); other
    attributes are forwarded to it."""

    def __init__(self, server: Any, db: Any) -> None:
        self.server = server
        self.db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def load_component(server: Any, section: Any) -> DatabaseComponent:
    """Open the database in ``DATA_PATH/database/`` and set ``server.database``.
    On the first open of an empty store, ``Database`` imports
    ``DATA_PATH/database/moonraker-sql.db`` (Moonraker >= 0.9) when present.

    Returns: the :class:`DatabaseComponent`.
    Raises: ``DatabaseLocked`` / ``lmdb.Error`` when the store cannot be opened.
    """
    from .store import Database
    if section is not None:
        # Moonraker 0.11's options, read so server.config lists them: the
        # folder is DATA_PATH/database whatever database_path says (spec:
        # configuration.md [database]); the debug endpoints need -g.
        section.get("database_path", None)
        section.getboolean("enable_database_debug", False)
    db = Database(os.path.join(server.data_path, "database"), import_moonraker=True)
    if db.imported:
        log.info("database: imported Moonraker database: %s", db.imported)
    if server.config.has_section("update_manager"):
        db.protect_namespace("update_manager")
    server.database = db
    return DatabaseComponent(server, db)
