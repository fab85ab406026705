"""Components: the state and logic of each moonraker.conf section, under
Moonraker's names (DESIGN.md "Shape")."""
