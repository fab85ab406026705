"""``python -m moonflask.components.database {backup,restore,dump} DATA_PATH ...``:
see :func:`moonflask.components.database.store.main`."""
import sys

from .cli import main

sys.exit(main())
