"""The gunicorn entry: ``gunicorn -c gunicorn.conf.py wsgi:app``.

The data path comes from ``MOONFLASK_DATA_PATH`` (default ~/printer_data),
the config from ``MOONFLASK_CONFIG``.  gunicorn's gevent worker has already
patched the standard library when this module is imported (never --preload).
"""
from moonflask.app import create_app
from moonflask.http_limits import RequestHeadLimit

app = create_app()
# the reference's 64 KiB request head (414/431 beyond); gunicorn.conf.py opens
# gunicorn's own, smaller limits
app.wsgi_app = RequestHeadLimit(app.wsgi_app)  # type: ignore[method-assign]
