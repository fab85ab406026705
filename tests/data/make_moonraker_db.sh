#!/usr/bin/env bash
# Produces tests/data/moonraker-sql.db: a database written by the REAL
# Moonraker 0.11.0 (run as a black box), used by tests/test_database_store.py
# to test moonflask's import of a Moonraker (>= 0.9, SQLite) database.
#
# Usage: tests/data/make_moonraker_db.sh [OUT_FILE]
#   MOONRAKER=/work/scratch/refvenv/bin/moonraker  PORT=17346  (overridable)
#
# What it does:
#  1. starts Moonraker 0.11.0 on an empty data path ([authorization] with
#     127.0.0.0/8 trusted, [history], [webcam], [job_queue], [announcements]);
#  2. over HTTP: posts front-end items (fluidd / mainsail namespaces, nested
#     keys, a key containing a dot, every scalar type), creates the user
#     "alice" (password "s3cret-pass"), adds the webcam "front", reads the
#     API key (printed);
#  3. stops Moonraker (SIGTERM), then adds two job_history rows and updates
#     job_totals with sqlite3 -- there is no Klippy here, so Moonraker cannot
#     record a print itself; these rows are synthetic, in the schema Moonraker
#     created;
#  4. restarts Moonraker and checks that /server/history/list and
#     /server/history/totals report the synthetic rows (i.e. the real Moonraker
#     accepts them), stops it, and copies database/moonraker-sql.db to OUT_FILE.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-$HERE/moonraker-sql.db}"
MOONRAKER="${MOONRAKER:-/work/scratch/refvenv/bin/moonraker}"
PORT="${PORT:-17346}"
B="http://127.0.0.1:$PORT"
DATA="$(mktemp -d /tmp/mkmrdb.XXXXXX)"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
mkdir -p "$DATA/config"
cat > "$DATA/config/moonraker.conf" <<CONF
[server]
host: 127.0.0.1
port: $PORT
klippy_uds_address: $DATA/nonexistent.sock
[authorization]
trusted_clients:
  127.0.0.0/8
[history]
[webcam]
[job_queue]
[announcements]
CONF

start() {
  "$MOONRAKER" -d "$DATA" > "$DATA/moonraker.out" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    curl -sf "$B/server/info" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "moonraker did not start" >&2; cat "$DATA/moonraker.out" >&2; exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=""; }
post() { curl -sf -X POST -H 'Content-Type: application/json' "$B$1" -d "$2" >/dev/null; }
item() { post /server/database/item "{\"namespace\":\"$1\",\"key\":$2,\"value\":$3}"; }

start
item fluidd '"uiSettings.general.instanceName"' '"Test Printer"'
item fluidd '"uiSettings.theme"' '{"isDark":true,"color":"#2196F3"}'
item fluidd '"a.b"' '{"x":1}'
item fluidd '["c","d.e"]' '[1,2]'
item fluidd '"int"' '42'
item fluidd '"neg"' '-7'
item fluidd '"float"' '1.5'
item fluidd '"yes"' 'true'
item fluidd '"no"' 'false'
item fluidd '"str"' '"h\u00e9llo"'
item fluidd '"empty"' '""'
item fluidd '"list"' '["a",{"b":null}]'
item mainsail '"general.printername"' '"Voron"'
item mainsail '"dashboard.nonExpanded"' '["webcam"]'
post /access/user '{"username":"alice","password":"s3cret-pass"}'
post /server/webcams/item '{"name":"front","stream_url":"/webcam/?action=stream","snapshot_url":"/webcam/?action=snapshot","location":"printer","target_fps":20}'
echo "api key: $(curl -sf "$B/access/api_key")"
stop

sqlite3 "$DATA/database/moonraker-sql.db" <<'SQL'
INSERT INTO job_history (job_id, user, filename, status, start_time, end_time,
  print_duration, total_duration, filament_used, metadata, auxiliary_data, instance_id)
VALUES
 (1, 'alice', 'benchy.gcode', 'completed', 1700000000.5, 1700003600.25,
  3500.0, 3599.75, 4321.5,
  '{"size":123456,"modified":1699999000.0,"slicer":"PrusaSlicer","slicer_version":"2.7.0","layer_height":0.2,"first_layer_height":0.2,"object_height":48.0,"filament_total":4321.5,"estimated_time":3400,"thumbnails":[]}',
  '[]', 'default'),
 (2, '_TRUSTED_USER_', 'sub/cube.gcode', 'cancelled', 1700010000.0, 1700010100.0,
  90.0, 100.0, 12.25, '{"size":2048,"modified":1699999500.0}', '[]', 'default');
UPDATE job_totals SET total = 2 WHERE field = 'total_jobs';
UPDATE job_totals SET total = 3699.75 WHERE field = 'total_time';
UPDATE job_totals SET total = 3590.0 WHERE field = 'total_print_time';
UPDATE job_totals SET total = 4333.75 WHERE field = 'total_filament_used';
UPDATE job_totals SET maximum = 3599.75 WHERE field = 'longest_job';
UPDATE job_totals SET maximum = 3500.0 WHERE field = 'longest_print';
SQL

start
curl -sf "$B/server/history/list" | python3 -c '
import json, sys
jobs = json.load(sys.stdin)["result"]["jobs"]
assert sorted(j["job_id"] for j in jobs) == ["000001", "000002"], jobs
print("history ok:", [(j["job_id"], j["filename"], j["status"]) for j in jobs])'
curl -sf "$B/server/history/totals" | python3 -c '
import json, sys
t = json.load(sys.stdin)["result"]["job_totals"]
assert t["total_jobs"] == 2 and t["longest_print"] == 3500.0, t
print("totals ok:", t)'
stop
# checkpoint the WAL (if any) so the single file is complete
sqlite3 "$DATA/database/moonraker-sql.db" 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null
cp "$DATA/database/moonraker-sql.db" "$OUT"
echo "wrote $OUT"
