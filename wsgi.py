"""The gunicorn entry: ``gunicorn -c gunicorn.conf.py wsgi:app``.

The data path comes from ``MOONFLASK_DATA_PATH`` (default ~/printer_data),
the config from ``MOONFLASK_CONFIG``.  gunicorn's gevent worker has already
patched the standard library when this module is imported (never --preload).
"""
from moonflask.app import create_app

app = create_app()
