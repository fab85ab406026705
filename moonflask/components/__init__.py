"""Components: state and logic per moonraker.conf section, under Moonraker's names."""
