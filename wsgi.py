"""The gunicorn entry: ``gunicorn -c gunicorn.conf.py wsgi:app``.

The data path comes from ``MOONFLASK_DATA_PATH`` (default ~/printer_data),
the config from ``MOONFLASK_CONFIG``.  gunicorn's gevent worker has already
patched the standard library when this module is imported (never --preload;
gevent's own patch_all: ``moonflask.lean.patch_gevent``'s savings are for
``python -m moonflask`` only).
"""
from moonflask import lean

lean.defer_unused_imports()  # before flask is imported (moonflask.lean)

from moonflask.app import create_app  # noqa: E402
from moonflask.http_limits import RequestHeadLimit  # noqa: E402

app = create_app()
lean.settle_after_start(app.extensions["moonflask"].events)
# the reference's 64 KiB request head (414/431 beyond); gunicorn.conf.py opens
# gunicorn's own, smaller limits
app.wsgi_app = RequestHeadLimit(app.wsgi_app)  # type: ignore[method-assign]
