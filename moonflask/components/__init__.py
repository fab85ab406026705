"""moonraker.conf components: state and logic per section, under Moonraker's names."""
