"""Command line of the metadata extractor:
``python -m moonflask.components.file_manager.metadata -p ROOT -f FILE
[--check-objects] [-u UFP]`` prints ``{"file": FILE, "metadata": {...}}`` as
JSON (see :func:`moonflask.components.file_manager.metadata.main`)."""
import sys

from . import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
