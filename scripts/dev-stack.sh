#!/usr/bin/env bash
# The development stack: PostgreSQL with wal_level=logical on 127.0.0.1:5432 and a
# Kafka-protocol broker (tansu, SQLite engine) on 127.0.0.1:9092.
#
#   scripts/dev-stack.sh up            install what is missing, start both (idempotent)
#   scripts/dev-stack.sh broker-stop   stop the broker (tests use this to cut Kafka off)
#   scripts/dev-stack.sh broker-start  start the broker again, keeping its data
#   scripts/dev-stack.sh broker-reset  stop the broker, delete its data, start it empty
#   scripts/dev-stack.sh drop-test-slots  drop inactive replication slots in database test
#   scripts/dev-stack.sh status        say what runs
#
# Everything it installs or starts is idempotent: running it twice changes nothing.
set -euo pipefail

PGHOST_ADDR=127.0.0.1
PGPORT_NUM=5432
BROKER_PORT=9092
TANSU_VERSION=0.6.0
STACK_DIR=${TIDEMARK_STACK_DIR:-$HOME/.local/share/tidemark}
TANSU_DIR=$STACK_DIR/tansu
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf 'dev-stack: %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

psql_admin() { psql -h "$PGHOST_ADDR" -p "$PGPORT_NUM" -U postgres -d postgres -Atqc "$1"; }

pg_cluster() {
  # The Debian cluster that owns port 5432, as "version name".
  pg_lsclusters -h 2>/dev/null | awk -v p="$PGPORT_NUM" '$3 == p { print $1, $2; exit }'
}

pg_up() { pg_isready -q -h "$PGHOST_ADDR" -p "$PGPORT_NUM" 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do "$@" && return 0; sleep 0.2; done
  log "timed out after ${secs}s waiting for $what"; return 1
}

ensure_postgres() {
  if ! command -v pg_lsclusters >/dev/null 2>&1 && ! pg_up; then
    log "installing PostgreSQL with apt-get"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
  fi
  local cluster
  cluster=$(pg_cluster || true)
  if ! pg_up; then
    [ -n "$cluster" ] || { log "no PostgreSQL cluster on port $PGPORT_NUM"; exit 1; }
    log "starting PostgreSQL $cluster"
    # shellcheck disable=SC2086
    as_root pg_ctlcluster --skip-systemctl-redirect $cluster start
    wait_for 30 "PostgreSQL" pg_up
  fi
  local level slots senders
  level=$(psql_admin "show wal_level")
  slots=$(psql_admin "show max_replication_slots")
  senders=$(psql_admin "show max_wal_senders")
  if [ "$level" != logical ] || [ "$slots" -lt 64 ] || [ "$senders" -lt 64 ]; then
    log "setting wal_level=logical, max_replication_slots=64, max_wal_senders=64 and restarting PostgreSQL"
    psql_admin "ALTER SYSTEM SET wal_level = 'logical'"
    psql_admin "ALTER SYSTEM SET max_replication_slots = 64"
    psql_admin "ALTER SYSTEM SET max_wal_senders = 64"
    [ -n "$cluster" ] || { log "cannot restart PostgreSQL: no Debian cluster on port $PGPORT_NUM; restart it yourself"; exit 1; }
    # shellcheck disable=SC2086
    as_root pg_ctlcluster --skip-systemctl-redirect $cluster restart
    wait_for 30 "PostgreSQL" pg_up
  fi
  # The max_connections default (100) is too small for the fan-out tests.
  if [ "$(psql_admin "show max_connections")" -lt 300 ]; then
    psql_admin "ALTER SYSTEM SET max_connections = 300"
    # shellcheck disable=SC2086
    as_root pg_ctlcluster --skip-systemctl-redirect $cluster restart
    wait_for 30 "PostgreSQL" pg_up
  fi
  log "PostgreSQL ready on $PGHOST_ADDR:$PGPORT_NUM (wal_level=$(psql_admin "show wal_level"))"
}

ensure_tansu_binary() {
  if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  log "building tansu $TANSU_VERSION with cargo install (takes 8-10 minutes once)"
  cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features \
    --features dynostore,libsql,postgres
}

broker_up() { (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null; }

broker_start() {
  ensure_tansu_binary
  if broker_up; then log "broker already listening on 127.0.0.1:$BROKER_PORT"; return 0; fi
  mkdir -p "$TANSU_DIR"
  log "starting tansu in $TANSU_DIR (log: $TANSU_DIR/tansu.log)"
  (
    cd "$TANSU_DIR"
    nohup tansu broker \
      --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --storage-engine sqlite://tansu.db >>tansu.log 2>&1 &
    echo $! >tansu.pid
  )
  wait_for 30 "the broker on 127.0.0.1:$BROKER_PORT" broker_up
  log "broker ready on 127.0.0.1:$BROKER_PORT"
}

broker_port_closed() { ! (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null; }

broker_stop() {
  # SIGTERM first, so tansu closes its SQLite database cleanly. tansu waits for open
  # connections when it shuts down, so a client that lingers can hold it up: after
  # 10 s it gets SIGKILL, which SQLite's journal survives.
  local pid=""
  [ -f "$TANSU_DIR/tansu.pid" ] && pid=$(cat "$TANSU_DIR/tansu.pid")
  [ -n "$pid" ] || pid=$(pgrep -f "tansu broker --listener-url tcp://127.0.0.1:$BROKER_PORT" | head -n1 || true)
  if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "the broker did not stop on SIGTERM within 10s; sending SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  pkill -9 -f "tansu broker --listener-url tcp://127.0.0.1:$BROKER_PORT" 2>/dev/null || true
  wait_for 30 "the broker to release port $BROKER_PORT" broker_port_closed
  rm -f "$TANSU_DIR/tansu.pid"
  log "broker stopped"
}

case "${1:-up}" in
  up) ensure_postgres; broker_start ;;
  broker-start) broker_start ;;
  broker-stop) broker_stop ;;
  broker-reset) broker_stop; rm -f "$TANSU_DIR"/tansu.db*; broker_start ;;
  drop-test-slots)
    # Inactive slots in the test database, left by interrupted test runs: they pin WAL.
    n=$(psql -h "$PGHOST_ADDR" -p "$PGPORT_NUM" -U postgres -d test -Atqc \
      "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE NOT active AND database = 'test'")
    log "dropped $n inactive replication slots in database test" ;;
  status)
    pg_up && echo "postgres: up ($(psql_admin "show wal_level"))" || echo "postgres: down"
    broker_up && echo "broker: up" || echo "broker: down" ;;
  *) echo "usage: $0 [up|broker-start|broker-stop|broker-reset|drop-test-slots|status]" >&2; exit 2 ;;
esac
