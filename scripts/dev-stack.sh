#!/usr/bin/env bash
# The development stack: PostgreSQL with wal_level=logical on 127.0.0.1:5432 and a
# single-node Apache Kafka (KRaft, combined broker and controller) on 127.0.0.1:9092.
#
#   scripts/dev-stack.sh up            install what is missing, start both (idempotent)
#   scripts/dev-stack.sh broker-stop   stop the broker (SIGTERM, clean shutdown)
#   scripts/dev-stack.sh broker-start  start the broker again, keeping its data
#   scripts/dev-stack.sh broker-reset  stop the broker, delete its data, start it empty
#   scripts/dev-stack.sh drop-test-slots  drop inactive replication slots in database test
#   scripts/dev-stack.sh status        say what runs
#   scripts/dev-stack.sh broker-name   the broker's name and version, for reports
#   scripts/dev-stack.sh node-start PORT DIR   another Kafka node on PORT with its data in DIR
#   scripts/dev-stack.sh node-stop DIR         stop that node (SIGTERM), keeping its data
#
# A development stack, not a deployment: the postgres role connects from 127.0.0.1
# without a password, and Kafka listens in PLAINTEXT on 127.0.0.1 only.
# Everything it installs or starts is idempotent: running it twice changes nothing.
set -euo pipefail

PGHOST_ADDR=127.0.0.1
PGPORT_NUM=5432
BROKER_PORT=9092
# Keep in step with scripts/kafka/pom.xml and the image in docker-compose.yml.
KAFKA_VERSION=4.1.1
SCRIPTS_DIR=$(cd "$(dirname "$0")" && pwd)
STACK_DIR=${TIDEMARK_STACK_DIR:-$HOME/.local/share/tidemark}
KAFKA_LIBS=$STACK_DIR/kafka-$KAFKA_VERSION/libs
BROKER_DIR=$STACK_DIR/kafka-node
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java

log() { printf 'dev-stack: %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

# Administration goes through the local socket as the postgres OS user (peer
# authentication), so it works before the 127.0.0.1 rule below exists.
psql_admin() { as_postgres psql -p "$PGPORT_NUM" -d postgres -Atqc "$1"; }

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

pg_server_installed() { compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; }

ensure_postgres() {
  if ! pg_server_installed; then
    log "installing PostgreSQL with apt-get"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
  fi
  local cluster
  cluster=$(pg_cluster || true)
  if [ -z "$cluster" ]; then
    local version
    version=$(basename "$(dirname "$(dirname "$(compgen -G "/usr/lib/postgresql/*/bin/postgres" | sort -V | tail -n1)")")")
    log "creating PostgreSQL $version cluster main on port $PGPORT_NUM"
    as_root pg_createcluster --port "$PGPORT_NUM" "$version" main >/dev/null
    cluster="$version main"
  fi
  # shellcheck disable=SC2086
  set -- $cluster
  local version=$1 name=$2
  if ! pg_up; then
    log "starting PostgreSQL $version/$name"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
    wait_for 30 "PostgreSQL" pg_up
  fi

  # Password-less access for the development role on 127.0.0.1 only, SQL and
  # replication: first in pg_hba.conf, so it wins over the packaged rules.
  local hba marker="# tidemark development stack"
  hba=$(psql_admin "show hba_file")
  if ! as_root grep -qF "$marker" "$hba"; then
    log "allowing the postgres role from 127.0.0.1 without a password ($hba)"
    as_root sh -c "{ printf '%s\n' '$marker' \
      'host all postgres 127.0.0.1/32 trust' \
      'host replication postgres 127.0.0.1/32 trust'; cat '$hba'; } > '$hba.tidemark' && \
      cat '$hba.tidemark' > '$hba' && rm -f '$hba.tidemark'"
    psql_admin "select pg_reload_conf()" >/dev/null
  fi

  # Logical decoding, and enough slots, WAL senders and connections for the tests
  # (they run up to 64 slots and a few hundred connections). Restart only when a
  # setting that needs it changed.
  psql_admin "ALTER SYSTEM SET wal_level = 'logical'"
  local setting
  for setting in max_replication_slots:64 max_wal_senders:64 max_connections:300; do
    local key=${setting%%:*} want=${setting##*:}
    if [ "$(psql_admin "show $key")" -lt "$want" ]; then
      psql_admin "ALTER SYSTEM SET $key = $want"
    fi
  done
  psql_admin "select pg_reload_conf()" >/dev/null
  sleep 0.5
  if [ "$(psql_admin "select count(*) from pg_settings where pending_restart")" != 0 ]; then
    log "restarting PostgreSQL $version/$name for: $(psql_admin "select string_agg(name, ', ') from pg_settings where pending_restart")"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" restart
    wait_for 30 "PostgreSQL" pg_up
  fi
  if [ "$(psql_admin "select count(*) from pg_database where datname = 'test'")" = 0 ]; then
    psql_admin "CREATE DATABASE test"
    log "created database test"
  fi
  log "PostgreSQL $version ready on $PGHOST_ADDR:$PGPORT_NUM (wal_level=$(psql_admin "show wal_level"))"
}

ensure_java() {
  command -v "$JAVA" >/dev/null 2>&1 || { log "no java: install OpenJDK 17 or later (apt-get install openjdk-17-jre-headless)"; exit 1; }
  local major
  major=$("$JAVA" -version 2>&1 | awk -F'"' '/version/ { split($2, v, "."); print v[1]; exit }')
  [ "${major:-0}" -ge 17 ] || { log "Kafka $KAFKA_VERSION needs Java 17 or later; $JAVA is $major"; exit 1; }
}

ensure_kafka_jars() {
  # Fetched once with Maven into the stack directory; later runs are offline.
  [ -f "$KAFKA_LIBS/.complete" ] && return 0
  command -v mvn >/dev/null 2>&1 || { log "no mvn: install Maven (apt-get install maven) to fetch Apache Kafka"; exit 1; }
  log "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIBS (once)"
  rm -rf "$KAFKA_LIBS"
  mkdir -p "$KAFKA_LIBS"
  mvn -q -B -Dstyle.color=never -f "$SCRIPTS_DIR/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >&2
  touch "$KAFKA_LIBS/.complete"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_closed() { ! port_open "$1"; }

node_running() { # node_running DIR: the node's process is alive
  [ -f "$1/kafka.pid" ] && kill -0 "$(cat "$1/kafka.pid")" 2>/dev/null
}

node_config() { # node_config PORT DIR: one node as both broker and controller
  local port=$1 dir=$2 controller=$(($1 + 1000))
  # Apache Kafka's defaults, but for what a single node needs: its listeners, and
  # replication factor 1 for the internal topics. Automatic topic creation stays on.
  # TIDEMARK_NODE_PROXY_PORT=P adds a listener on PORT+2000 that tells clients to come
  # back through 127.0.0.1:P (a test's proxy in front of it), and
  # TIDEMARK_NODE_PROPERTIES="k=v;k=v" adds broker settings; tests use both.
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller"
  local advertised="PLAINTEXT://127.0.0.1:$port"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [ -n "${TIDEMARK_NODE_PROXY_PORT:-}" ]; then
    listeners="$listeners,PROXIED://127.0.0.1:$((port + 2000))"
    advertised="$advertised,PROXIED://127.0.0.1:$TIDEMARK_NODE_PROXY_PORT"
    protocols="$protocols,PROXIED:PLAINTEXT"
  fi
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$dir/data
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
EOF
  if [ -n "${TIDEMARK_NODE_PROPERTIES:-}" ]; then
    tr ';' '\n' <<<"$TIDEMARK_NODE_PROPERTIES" >>"$dir/server.properties"
  fi
}

kafka_java() { # kafka_java DIR: sets JAVA_CMD, a JVM on the stack's Kafka jars
  JAVA_CMD=("$JAVA" -Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -Djava.awt.headless=true
    -Dkafka.node.dir="$1" -Dlog4j2.configurationFile="$SCRIPTS_DIR/kafka/log4j2.properties"
    -cp "$KAFKA_LIBS/*")
}

node_start() { # node_start PORT DIR
  local port=$1 dir=$2
  ensure_java
  ensure_kafka_jars
  if port_open "$port"; then log "Kafka already listening on 127.0.0.1:$port"; return 0; fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  node_config "$port" "$dir"
  kafka_java "$dir"
  if [ ! -f "$dir/data/meta.properties" ]; then
    # KRaft storage is formatted once, with a cluster id of 16 random bytes in URL-safe
    # base64, as Kafka's own random-uuid makes it: never starting with '-', which the
    # tool's argument parser would read as an option (1 id in 64 otherwise).
    local cluster_id=-
    while [ "${cluster_id:0:1}" = - ]; do
      cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
    done
    "${JAVA_CMD[@]}" kafka.tools.StorageTool format --cluster-id="$cluster_id" \
      --config "$dir/server.properties" >>"$dir/kafka.log" 2>&1 || {
      log "formatting $dir/data with cluster id $cluster_id failed; last lines of $dir/kafka.log:"
      tail -n 20 "$dir/kafka.log" >&2
      exit 1
    }
  fi
  log "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (data and kafka.log in $dir)"
  nohup "${JAVA_CMD[@]}" kafka.Kafka "$dir/server.properties" >>"$dir/kafka.out" 2>&1 </dev/null &
  echo $! >"$dir/kafka.pid"
  local i
  for i in $(seq 1 300); do
    port_open "$port" && { log "Kafka ready on 127.0.0.1:$port"; return 0; }
    node_running "$dir" || break
    sleep 0.2
  done
  log "Kafka on port $port did not start (after ${i} checks); last lines of $dir/kafka.log:"
  tail -n 20 "$dir/kafka.log" "$dir/kafka.out" >&2 2>/dev/null || true
  exit 1
}

node_stop() { # node_stop DIR: SIGTERM and a clean shutdown; SIGKILL only after 60 s
  local dir=$1 pid
  [ -f "$dir/kafka.pid" ] || { log "no Kafka node runs from $dir"; return 0; }
  pid=$(cat "$dir/kafka.pid")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "Kafka ($dir) did not stop within 60 s of SIGTERM; sending SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
  fi
  rm -f "$dir/kafka.pid"
  log "Kafka ($dir) stopped"
}

broker_start() { node_start "$BROKER_PORT" "$BROKER_DIR"; }

broker_stop() {
  node_stop "$BROKER_DIR"
  wait_for 30 "the broker to release port $BROKER_PORT" port_closed "$BROKER_PORT"
}

case "${1:-up}" in
  up) ensure_postgres; broker_start ;;
  broker-start) broker_start ;;
  broker-stop) broker_stop ;;
  broker-reset) broker_stop; rm -rf "$BROKER_DIR/data" "$BROKER_DIR/kafka.log" "$BROKER_DIR/kafka.out"; broker_start ;;
  node-start) node_start "${2:?port}" "${3:?directory}" ;;
  node-stop) node_stop "${2:?directory}" ;;
  broker-name) echo "Apache Kafka $KAFKA_VERSION (KRaft, one node as broker and controller, 1 GiB heap, JDK $("$JAVA" -version 2>&1 | awk -F'"' '/version/ { print $2; exit }'))" ;;
  drop-test-slots)
    # Inactive slots in the test database, left by interrupted test runs: they pin WAL.
    n=$(as_postgres psql -p "$PGPORT_NUM" -d test -Atqc \
      "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE NOT active AND database = 'test'")
    log "dropped $n inactive replication slots in database test" ;;
  status)
    pg_up && echo "postgres: up ($(psql_admin "show wal_level"))" || echo "postgres: down"
    port_open "$BROKER_PORT" && echo "broker: up (Apache Kafka $KAFKA_VERSION)" || echo "broker: down" ;;
  *) echo "usage: $0 [up|broker-start|broker-stop|broker-reset|drop-test-slots|status|broker-name|node-start PORT DIR|node-stop DIR]" >&2; exit 2 ;;
esac
