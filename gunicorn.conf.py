"""gunicorn settings: one gevent worker (all state is in-process), bound to
the host and port of ``[server]`` in moonraker.conf."""
import configparser
import os

_data = os.path.expanduser(os.environ.get("MOONFLASK_DATA_PATH", "~/printer_data"))
_conf = os.environ.get("MOONFLASK_CONFIG") or os.path.join(_data, "config", "moonraker.conf")
_parser = configparser.ConfigParser(interpolation=None, strict=False)
_parser.read(_conf)
_host = _parser.get("server", "host", fallback="0.0.0.0")
_port = _parser.get("server", "port", fallback="7125")

bind = f"{_host}:{_port}"
worker_class = "gevent"
workers = 1
worker_connections = 1000
timeout = 120          # seconds: CPU work never runs on the hub, this is a safety net
graceful_timeout = 5
preload_app = False    # the gevent worker patches after fork: never preload
# Moonraker accepts a request line and headers of up to 64 KiB (gcode scripts
# in the query string); gunicorn caps limit_request_line at 8190 unless it is
# 0 (no limit), and a field at limit_request_field_size.  The 64 KiB limit
# itself (414/431) is applied by moonflask.http_limits.RequestHeadLimit (wsgi.py).
limit_request_line = 0
limit_request_field_size = 65536
limit_request_fields = 100
