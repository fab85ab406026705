#!/usr/bin/env bash
# `make run`: moonflask on $PORT with $DATA as printer_data.  When the
# configured klippy_uds_address has no Klippy behind it, the simulated
# printer from ../shared/klipper is started on that socket first.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-$PWD/printer_data}
PORT=${PORT:-7125}
PY=${PY:-.venv/bin/python}
mkdir -p "$DATA"/{config,gcodes,logs,database,comms}
CONF="$DATA/config/moonraker.conf"
if [ ! -f "$CONF" ]; then
  "$PY" -c "from moonflask.config import write_default_config as w; w('$CONF', '$DATA/comms/klippy.sock')"
  sed -i "s/^port: .*/port: $PORT/" "$CONF"
fi
SOCK=$("$PY" - "$CONF" "$DATA" <<'PYEOF'
import configparser, os, sys
p = configparser.ConfigParser(interpolation=None, strict=False); p.read(sys.argv[1])
print(os.path.expanduser(p.get("server", "klippy_uds_address",
                               fallback=os.path.join(sys.argv[2], "comms", "klippy.sock"))))
PYEOF
)
SIM_PID=""
cleanup() { [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null || true; }
trap cleanup EXIT
if ! "$PY" -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])" "$SOCK" 2>/dev/null; then
  echo "No Klippy at $SOCK: starting the simulated printer"
  "$PY" scripts/sim_printer.py --workdir "$DATA/klippy" --gcodes "$DATA/gcodes" --socket "$SOCK" &
  SIM_PID=$!
fi
echo "moonflask on http://0.0.0.0:$PORT (data: $DATA, log: $DATA/logs/moonraker.log)"
"$PY" -m moonflask -d "$DATA"
