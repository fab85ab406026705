"""moonflask: a drop-in replacement for Moonraker, the API server of Klipper."""

__version__ = "0.1.0"
API_VERSION = (1, 5, 0)
# What server.info reports as moonraker_version: the Moonraker release whose
# API moonflask implements, with moonflask's own version as build metadata.
MOONRAKER_VERSION = f"v0.11.0+moonflask.{__version__}"
