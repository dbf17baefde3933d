#!/usr/bin/env bash
# The development stack: PostgreSQL with wal_level=logical on 127.0.0.1:5432 and a
# single-node Apache Kafka (KRaft, combined broker and controller) on 127.0.0.1:9092
# (PLAINTEXT) and 127.0.0.1:9094 (SASL_SSL, SCRAM-SHA-512).
#
#   scripts/dev-stack.sh up            install what is missing (PostgreSQL; libssl-dev and
#                                      pkg-config for the Rust build), start both (idempotent)
#   scripts/dev-stack.sh build-deps    install only what the Rust build needs (libssl-dev, pkg-config)
#   scripts/dev-stack.sh bench-deps    install what only the benchmarks use (mimalloc's library,
#                                      for the warm-start rows with another allocator)
#   scripts/dev-stack.sh broker-stop   stop the broker (SIGTERM, clean shutdown)
#   scripts/dev-stack.sh broker-start  start the broker again, keeping its data
#   scripts/dev-stack.sh broker-reset  stop the broker, delete its data, start it empty
#   scripts/dev-stack.sh drop-test-slots  drop inactive replication slots in database test
#   scripts/dev-stack.sh status        say what runs
#   scripts/dev-stack.sh broker-name   the broker's name and version, for reports
#   scripts/dev-stack.sh node-start PORT DIR   another Kafka node on PORT with its data in DIR
#   scripts/dev-stack.sh node-stop DIR         stop that node (SIGTERM), keeping its data
#   scripts/dev-stack.sh kafka-sasl-ssl-properties  a client's librdkafka settings for the
#                                      SASL_SSL listener, one key=value a line (the same as
#                                      ~/.local/share/tidemark/kafka-tls/client.properties)
#
# A development stack, not a deployment: the postgres role connects from 127.0.0.1
# without a password, and Kafka listens on 127.0.0.1 only: in PLAINTEXT on 9092, and
# with SASL_SSL on 9094 for one development user whose password is in this file (the
# broker's certificate is signed by a throwaway CA made here).
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
KEYTOOL=${JAVA_HOME:+$JAVA_HOME/bin/}keytool
# The shared broker's second listener: SASL_SSL with SCRAM-SHA-512 for one development
# user, its certificate (for localhost and 127.0.0.1) signed by a CA made once in TLS_DIR.
SASL_SSL_PORT=9094
TLS_DIR=$STACK_DIR/kafka-tls
SCRAM_USER=tidemark
SCRAM_PASSWORD=tidemark-dev-password
# Protects the development keystores only; they never leave this machine.
STORE_PASSWORD=tidemark-dev-store

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
  # (a run creates over 64 slots, dropped when the test binary exits, and a few
  # hundred connections). Restart only when a setting that needs it changed.
  psql_admin "ALTER SYSTEM SET wal_level = 'logical'"
  local setting
  for setting in max_replication_slots:160 max_wal_senders:160 max_connections:300; do
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

ensure_build_deps() {
  # rdkafka is built with TLS and SASL against the system OpenSSL, found with pkg-config.
  if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl 2>/dev/null; then
    return 0
  fi
  log "installing libssl-dev and pkg-config with apt-get (the Rust build links OpenSSL)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null
}

ensure_bench_deps() {
  # The warm-start benchmark runs some loads with mimalloc in LD_PRELOAD.
  if ls /usr/lib/*/libmimalloc.so.2 >/dev/null 2>&1; then
    return 0
  fi
  log "installing libmimalloc2.0 with apt-get (the benchmark's loads with another allocator)"
  # Best effort: without it the benchmark leaves those rows out and says so.
  if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmimalloc2.0 >/dev/null; }; then
    log "could not install libmimalloc2.0: the benchmark's rows with mimalloc will be left out"
  fi
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
  # TIDEMARK_NODE_SASL_SSL_PORT=P adds a SASL_SSL listener on P (SCRAM-SHA-512, the
  # certificate in TLS_DIR); the shared broker has one on SASL_SSL_PORT.
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller"
  local advertised="PLAINTEXT://127.0.0.1:$port"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [ -n "${TIDEMARK_NODE_PROXY_PORT:-}" ]; then
    listeners="$listeners,PROXIED://127.0.0.1:$((port + 2000))"
    advertised="$advertised,PROXIED://127.0.0.1:$TIDEMARK_NODE_PROXY_PORT"
    protocols="$protocols,PROXIED:PLAINTEXT"
  fi
  local sasl_ssl_port=${TIDEMARK_NODE_SASL_SSL_PORT:-}
  if [ -n "$sasl_ssl_port" ]; then
    listeners="$listeners,SASL_SSL://127.0.0.1:$sasl_ssl_port"
    advertised="$advertised,SASL_SSL://127.0.0.1:$sasl_ssl_port"
    protocols="$protocols,SASL_SSL:SASL_SSL"
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
  if [ -n "$sasl_ssl_port" ]; then
    # Clients authenticate with SCRAM-SHA-512 over TLS; the broker and the controller
    # still talk to each other in PLAINTEXT.
    cat >>"$dir/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$TLS_DIR/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$STORE_PASSWORD
listener.name.sasl_ssl.ssl.key.password=$STORE_PASSWORD
EOF
  fi
  if [ -n "${TIDEMARK_NODE_PROPERTIES:-}" ]; then
    tr ';' '\n' <<<"$TIDEMARK_NODE_PROPERTIES" >>"$dir/server.properties"
  fi
}

ensure_kafka_tls() {
  # A CA and the broker's certificate (localhost, 127.0.0.1), made once with the JDK's
  # keytool and reused: ca.pem (what clients trust), ca.p12 (the CA's key), broker.p12
  # (the broker's key and chain), and client.properties (a client's librdkafka settings).
  if [ ! -f "$TLS_DIR/broker.p12" ] || [ ! -f "$TLS_DIR/ca.pem" ]; then
    command -v "$KEYTOOL" >/dev/null 2>&1 || { log "no keytool: install a JDK (apt-get install openjdk-17-jre-headless)"; exit 1; }
    log "making a development CA and broker certificate in $TLS_DIR (once)"
    mkdir -p "$STACK_DIR"
    local work
    work=$(mktemp -d "$STACK_DIR/kafka-tls.XXXXXX")
    local kt=("$KEYTOOL" -storetype PKCS12 -storepass "$STORE_PASSWORD" -keypass "$STORE_PASSWORD")
    {
      "${kt[@]}" -genkeypair -keystore "$work/ca.p12" -alias ca -keyalg RSA -keysize 2048 \
        -validity 3650 -dname "CN=tidemark development CA" \
        -ext bc:c=ca:true -ext KeyUsage:critical=keyCertSign,cRLSign &&
      "${kt[@]}" -exportcert -rfc -keystore "$work/ca.p12" -alias ca -file "$work/ca.pem" &&
      "${kt[@]}" -genkeypair -keystore "$work/broker.p12" -alias broker -keyalg RSA -keysize 2048 \
        -validity 3650 -dname "CN=localhost" &&
      "${kt[@]}" -certreq -keystore "$work/broker.p12" -alias broker -file "$work/broker.csr" &&
      "${kt[@]}" -gencert -keystore "$work/ca.p12" -alias ca -infile "$work/broker.csr" \
        -outfile "$work/broker.pem" -rfc -validity 3650 \
        -ext SAN=dns:localhost,ip:127.0.0.1 -ext KeyUsage:critical=digitalSignature,keyEncipherment \
        -ext ExtendedKeyUsage=serverAuth &&
      "${kt[@]}" -importcert -noprompt -keystore "$work/broker.p12" -alias ca -file "$work/ca.pem" &&
      "${kt[@]}" -importcert -noprompt -keystore "$work/broker.p12" -alias broker -file "$work/broker.pem"
    } >"$work/keytool.log" 2>&1 || {
      log "keytool failed; its output:"; cat "$work/keytool.log" >&2; rm -rf "$work"; exit 1
    }
    rm -f "$work/broker.csr" "$work/keytool.log"
    rm -rf "$TLS_DIR"
    mv "$work" "$TLS_DIR"
  fi
  local props
  props=$(sasl_ssl_properties)
  if [ "$(cat "$TLS_DIR/client.properties" 2>/dev/null)" != "$props" ]; then
    printf '%s\n' "$props" >"$TLS_DIR/client.properties"
  fi
}

sasl_ssl_properties() { # a client's librdkafka settings for the SASL_SSL listener
  printf '%s\n' "security.protocol=SASL_SSL" "sasl.mechanism=SCRAM-SHA-512" \
    "sasl.username=$SCRAM_USER" "sasl.password=$SCRAM_PASSWORD" "ssl.ca.location=$TLS_DIR/ca.pem"
}

cluster_id() { sed -n 's/^cluster.id=//p' "$1/data/meta.properties" 2>/dev/null; }

ensure_scram_user() { # ensure_scram_user PORT DIR: the SCRAM user exists on the node
  # Storage formatted with a SASL_SSL listener gets the user then; storage formatted
  # before gets it here, once per cluster id (noted in DIR/scram-user).
  local port=$1 dir=$2 id
  id=$(cluster_id "$dir")
  [ -n "$id" ] && [ "$(cat "$dir/scram-user" 2>/dev/null)" = "$id" ] && return 0
  log "adding the SCRAM-SHA-512 user $SCRAM_USER through 127.0.0.1:$port"
  "${JAVA_CMD[@]}" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$port" --alter \
    --entity-type users --entity-name "$SCRAM_USER" \
    --add-config "SCRAM-SHA-512=[password=$SCRAM_PASSWORD]" >>"$dir/kafka.log" 2>&1 || {
    log "adding the SCRAM user failed; last lines of $dir/kafka.log:"; tail -n 20 "$dir/kafka.log" >&2; exit 1
  }
  echo "$id" >"$dir/scram-user"
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
  local sasl_ssl=${TIDEMARK_NODE_SASL_SSL_PORT:-}
  local format_extra=()
  if [ -n "$sasl_ssl" ]; then
    ensure_kafka_tls
    format_extra=(--add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]")
  fi
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
      --config "$dir/server.properties" "${format_extra[@]}" >>"$dir/kafka.log" 2>&1 || {
      log "formatting $dir/data with cluster id $cluster_id failed; last lines of $dir/kafka.log:"
      tail -n 20 "$dir/kafka.log" >&2
      exit 1
    }
    if [ -n "$sasl_ssl" ]; then echo "$cluster_id" >"$dir/scram-user"; fi
  fi
  log "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (data and kafka.log in $dir)"
  nohup "${JAVA_CMD[@]}" kafka.Kafka "$dir/server.properties" >>"$dir/kafka.out" 2>&1 </dev/null &
  echo $! >"$dir/kafka.pid"
  local i
  for i in $(seq 1 300); do
    if port_open "$port"; then
      if [ -n "$sasl_ssl" ]; then
        ensure_scram_user "$port" "$dir"
        log "Kafka ready on 127.0.0.1:$port (PLAINTEXT) and 127.0.0.1:$sasl_ssl (SASL_SSL, CA $TLS_DIR/ca.pem)"
      else
        log "Kafka ready on 127.0.0.1:$port"
      fi
      return 0
    fi
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

broker_start() {
  TIDEMARK_NODE_SASL_SSL_PORT=$SASL_SSL_PORT node_start "$BROKER_PORT" "$BROKER_DIR"
  if port_closed "$SASL_SSL_PORT"; then
    log "the broker on 127.0.0.1:$BROKER_PORT runs without the SASL_SSL listener on $SASL_SSL_PORT" \
      "(it was started before it had one); to add it: scripts/dev-stack.sh broker-stop && scripts/dev-stack.sh broker-start"
  fi
}

broker_stop() {
  node_stop "$BROKER_DIR"
  wait_for 30 "the broker to release port $BROKER_PORT" port_closed "$BROKER_PORT"
}

case "${1:-up}" in
  up) ensure_build_deps; ensure_postgres; broker_start ;;
  build-deps) ensure_build_deps ;;
  bench-deps) ensure_bench_deps ;;
  broker-start) broker_start ;;
  postgres-restart) # a restart under load, as a fault for tests
    # shellcheck disable=SC2046
    as_root pg_ctlcluster --skip-systemctl-redirect $(pg_cluster) restart
    wait_for 30 "PostgreSQL" pg_up ;;
  broker-stop) broker_stop ;;
  broker-reset) broker_stop; rm -rf "$BROKER_DIR/data" "$BROKER_DIR/kafka.log" "$BROKER_DIR/kafka.out" "$BROKER_DIR/scram-user"; broker_start ;;
  kafka-sasl-ssl-properties) ensure_kafka_tls; cat "$TLS_DIR/client.properties" ;;
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
    port_open "$BROKER_PORT" && echo "broker: up (Apache Kafka $KAFKA_VERSION)" || echo "broker: down"
    if port_open "$SASL_SSL_PORT"; then
      echo "broker SASL_SSL: up on 127.0.0.1:$SASL_SSL_PORT (user $SCRAM_USER, CA $TLS_DIR/ca.pem, client settings in $TLS_DIR/client.properties)"
    else
      echo "broker SASL_SSL: down"
    fi ;;
  *) echo "usage: $0 [up|build-deps|postgres-restart|broker-start|broker-stop|broker-reset|drop-test-slots|status|broker-name|node-start PORT DIR|node-stop DIR|kafka-sasl-ssl-properties]" >&2; exit 2 ;;
esac
