"""A dict-like view of one namespace (what components store their state in)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator


from ...api import ApiError
from .codec import _MISSING, _ns_dbname, parse_key

if TYPE_CHECKING:
    from .store import Database


class Namespace:
    """One namespace, for components (history, auth, job queue, webcams,
    announcements, metadata cache).  Obtain it with :meth:`Database.namespace`.

    Keys are strings; with ``parse_keys`` a dotted string is a nested path
    (``"history.job_totals"``); a list key is always a nested path.  Values
    returned are fresh copies (mutating them changes nothing stored).
    """

    def __init__(self, db: Database, name: str, parse_keys: bool) -> None:
        self.db = db
        self.name = name
        self.parse_keys = parse_keys

    def _parts(self, key: Any) -> list[str]:
        if isinstance(key, str) and not self.parse_keys:
            return [key]
        return parse_key(key)

    def get(self, key: Any, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` when missing."""
        parts = self._parts(key)
        return self.db._get_parts(self.name, _ns_dbname(self.name), parts, key, default)

    def __getitem__(self, key: Any) -> Any:
        parts = self._parts(key)
        try:
            return self.db._get_parts(self.name, _ns_dbname(self.name), parts, key, _MISSING)
        except ApiError as e:
            if e.status == 404:
                raise KeyError(key) from None
            raise

    def __contains__(self, key: Any) -> bool:
        absent = object()
        return self.get(key, absent) is not absent

    def insert(self, key: Any, value: Any) -> Any:
        """Store ``value`` at ``key`` (durably); returns ``value``.
        Raises ApiError(400) for an unstorable value."""
        return self.db._insert(self.name, self._parts(key), value)

    __setitem__ = insert

    def update(self, key: Any, value: Any) -> Any:
        """:meth:`Database.update_item` (merge objects); ApiError 404 if missing."""
        return self.db.update_item(self.name, self._parts(key), value)

    def delete(self, key: Any) -> Any:
        """Delete ``key``; returns the deleted value.  Raises ApiError(404)
        when missing (use :meth:`pop` to ignore that)."""
        return self.db.delete_item(self.name, self._parts(key))

    def __delitem__(self, key: Any) -> None:
        try:
            self.delete(key)
        except ApiError as e:
            if e.status == 404:
                raise KeyError(key) from None
            raise

    def pop(self, key: Any, default: Any = None) -> Any:
        """Delete ``key`` and return its value, or ``default`` when missing."""
        try:
            return self.delete(key)
        except ApiError as e:
            if e.status == 404:
                return default
            raise

    def keys(self) -> list[str]:
        """Top-level keys, in order."""
        return self.db.ns_keys(self.name)

    def values(self) -> list[Any]:
        """Top-level values, in key order."""
        return [v for _, v in self.db.ns_items(self.name)]

    def items(self) -> list[tuple[str, Any]]:
        """``[(key, value), ...]`` in key order."""
        return self.db.ns_items(self.name)

    def as_dict(self) -> dict[str, Any]:
        """The whole namespace as a dict."""
        return dict(self.db.ns_items(self.name))

    def __len__(self) -> int:
        return self.db.ns_length(self.name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def insert_batch(self, items: dict[str, Any]) -> None:
        """Store several top-level keys in one transaction."""
        self.db.insert_batch(self.name, items)

    def get_batch(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for the top-level keys that exist."""
        return self.db.get_batch(self.name, keys)

    def delete_batch(self, keys: Iterable[str]) -> dict[str, Any]:
        """Delete several top-level keys in one transaction; returns the deleted."""
        return self.db.delete_batch(self.name, keys)

    def clear(self) -> None:
        """Delete every key."""
        self.db.clear_namespace(self.name)


# -- command line ---------------------------------------------------------------------
