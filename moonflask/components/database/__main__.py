"""``python -m moonflask.components.database {backup,restore,dump} DATA_PATH ...``:
see :func:`moonflask.components.database.store.main`."""
import sys

from .store import main

sys.exit(main())
