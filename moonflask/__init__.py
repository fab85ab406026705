"""moonflask: a drop-in replacement for Moonraker, the API server of Klipper."""

__version__ = "0.1.0"
API_VERSION = (1, 5, 0)
