#!/usr/bin/env bash
# A real Apache Kafka broker (KRaft, one node: broker + controller) on loopback,
# for the integration tests and .ci/run.
#
#   scripts/kafka.sh fetch            resolve the broker jars into the cache (once)
#   scripts/kafka.sh start [PORT]     start a fresh broker, wait until ready, print 127.0.0.1:PORT
#   scripts/kafka.sh stop [PORT]      stop it and remove its state (idempotent)
#   scripts/kafka.sh status [PORT]    print "running 127.0.0.1:PORT pid N" (exit 0) or "stopped" (exit 1)
#   scripts/kafka.sh tool CLASS ARGS  run a Kafka CLI class from the cached jars, e.g.
#                                     org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:39092 --list
#
# Environment:
#   RLAP_KAFKA_PORT     client port (default 39092); the controller listens on PORT+1
#   RLAP_KAFKA_CACHE    cache folder (default <repo>/.cache/kafka); jars go to its libs/
#   RLAP_KAFKA_DIR      state folder of the broker (default $RLAP_KAFKA_CACHE/run-PORT)
#   RLAP_KAFKA_VERSION  org.apache.kafka:kafka_2.13 version (default 4.4.0; must be one Maven Central serves)
#   RLAP_KAFKA_HEAP     JVM heap flags (default -Xms1g -Xmx1g, as bin/kafka-server-start.sh)
#   RLAP_KAFKA_JVM_OPTS JVM flags besides the heap (default: the G1 settings of Kafka's
#                       bin/kafka-run-class.sh plus the 16 MB G1 region of Kafka's documented
#                       production settings; a heap under 1 GB wants smaller regions); the
#                       GC log goes to $RLAP_KAFKA_DIR/gc.log
#   RLAP_KAFKA_PROPERTIES extra server.properties lines, e.g. "log.flush.interval.ms=1000"
#                       (whitespace-separated key=value pairs, no spaces inside a value; later
#                       keys win; do not override log.dirs or listeners, which stop and the
#                       readiness check rely on)
#   RLAP_KAFKA_TIMEOUT  seconds start waits for readiness (default 90)
#
# The jars come from Maven Central through `mvn dependency:copy-dependencies` on a generated
# pom, because no other registry reachable here carries the broker. Kafka 4.x needs Java 17+.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION="${RLAP_KAFKA_VERSION:-4.4.0}"
# The broker's own pom pulls log4j-api/core 2.25.5 and slf4j-api 1.7.36; Kafka 4.x logs through
# slf4j 2 + log4j2, so pin slf4j 2 and its log4j2 binding (same log4j line as the broker's).
SLF4J_VERSION="2.0.17"
LOG4J_VERSION="2.25.5"
CACHE="${RLAP_KAFKA_CACHE:-$ROOT/.cache/kafka}"
LIBS="$CACHE/libs"
MARKER="$LIBS/.complete"
HEAP="${RLAP_KAFKA_HEAP:--Xms1g -Xmx1g}"
# KAFKA_JVM_PERFORMANCE_OPTS of Kafka 4.x bin/kafka-run-class.sh, plus -XX:G1HeapRegionSize=16M
# from Kafka's documented production JVM settings. With 1 MB regions (a 512 MB heap) a
# produce request of 0.5 MB or more is a humongous allocation; in bench-stream these set off
# bursts of young collections with pauses up to 320 ms. With 16 MB regions there were none.
JVM_OPTS="${RLAP_KAFKA_JVM_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:G1HeapRegionSize=16M -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15}"
EXTRA_PROPERTIES="${RLAP_KAFKA_PROPERTIES:-}"
TIMEOUT="${RLAP_KAFKA_TIMEOUT:-90}"

die() {
    echo "kafka.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# --- fetch -------------------------------------------------------------------------------------

libs_ready() {
    [[ -f "$MARKER" ]] && [[ "$(cat "$MARKER")" == "kafka_2.13 $KAFKA_VERSION" ]]
}

write_pom() {
    cat >"$1" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.rlap</groupId>
  <artifactId>rlap-kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- the CLI classes (TopicCommand, ConsoleProducer, ConsumerGroupCommand, ...) -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <!-- only ConnectPluginPath needs Connect (Jetty, Jersey, ...): leave it out -->
      <exclusions>
        <exclusion>
          <groupId>org.apache.kafka</groupId>
          <artifactId>connect-runtime</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>$SLF4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
}

cmd_fetch() {
    libs_ready && return 0
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    command -v java >/dev/null || die "java not found (apt-get install openjdk-17-jre-headless)"
    mkdir -p "$CACHE"
    # One fetch at a time (parallel test runners may all call start).
    exec 8>"$CACHE/fetch.lock"
    flock 8
    if libs_ready; then
        exec 8>&-
        return 0
    fi
    local work="$CACHE/fetch.tmp"
    rm -rf "$work"
    mkdir -p "$work/libs"
    write_pom "$work/pom.xml"
    echo "kafka.sh: resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION with mvn ..." >&2
    if ! mvn -B -q -f "$work/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$work/libs" >"$work/mvn.log" 2>&1; then
        tail -n 40 "$work/mvn.log" >&2
        die "mvn could not resolve the broker's jars (log: $work/mvn.log)"
    fi
    ls "$work/libs"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka_2.13 jar after mvn (log: $work/mvn.log)"
    echo "kafka_2.13 $KAFKA_VERSION" >"$work/libs/.complete"
    rm -rf "$LIBS"
    mv "$work/libs" "$LIBS"
    rm -rf "$work"
    exec 8>&-
}

# --- broker ------------------------------------------------------------------------------------

PORT=""
CPORT=""
RUN_DIR=""
PID_FILE=""
LOG_FILE=""

set_port() {
    PORT="${1:-${RLAP_KAFKA_PORT:-39092}}"
    if ! [[ "$PORT" =~ ^[1-9][0-9]{0,4}$ ]] || ((PORT >= 65535)); then
        die "bad port: $PORT (1-65534; the controller takes PORT+1)"
    fi
    CPORT=$((PORT + 1))
    # A broker started with RLAP_KAFKA_DIR elsewhere leaves a pointer, so that stop and status
    # find it without the variable (e.g. after an interrupted `make bench-stream`).
    POINTER="$CACHE/run-$PORT.dir"
    if [[ -n "${RLAP_KAFKA_DIR:-}" ]]; then
        RUN_DIR="$RLAP_KAFKA_DIR"
    elif [[ -f "$POINTER" && -d "$(cat "$POINTER")" ]]; then
        RUN_DIR="$(cat "$POINTER")"
    else
        RUN_DIR="$CACHE/run-$PORT"
    fi
    PID_FILE="$RUN_DIR/kafka.pid"
    LOG_FILE="$RUN_DIR/kafka.log"
}

# The PID in the pid file, if that process is alive and is our broker.
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled PID: the process must be kafka.Kafka on our config.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $RUN_DIR/server.properties" || return 1
    echo "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

lock_port() {
    mkdir -p "$(dirname "$RUN_DIR")"
    exec 9>"$RUN_DIR.lock"
    flock 9
}

write_config() {
    cat >"$RUN_DIR/server.properties" <<EOF
# Written by scripts/kafka.sh: a single-node KRaft broker for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$RUN_DIR/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
EOF
    local kv kvs
    read -r -a kvs <<<"$EXTRA_PROPERTIES"
    for kv in "${kvs[@]}"; do
        [[ "$kv" == *=* ]] || die "RLAP_KAFKA_PROPERTIES: '$kv' is not key=value"
        echo "$kv" >>"$RUN_DIR/server.properties"
    done
    # Kafka 4.x logs through log4j2; everything goes to stdout, which start sends to kafka.log.
    cat >"$RUN_DIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
# The full config dumps (2000+ lines a start); server.properties is beside the log.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
EOF
}

# A cluster id: 16 random bytes as URL-safe base64 without padding (Kafka's Uuid format).
# One starting with '-' would read as an option, as Kafka's own random-uuid also avoids.
new_cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && break
    done
    echo "$id"
}

cmd_start() {
    set_port "${1:-}"
    cmd_fetch
    lock_port
    local pid
    if pid="$(running_pid)"; then
        echo "127.0.0.1:$PORT"
        return 0
    fi
    if port_open "$PORT" || port_open "$CPORT"; then
        die "port $PORT or $CPORT is already taken by another process; pick another (RLAP_KAFKA_PORT)"
    fi
    # Every start is a fresh broker: no topics or offsets survive from an earlier run.
    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR/data" "$CACHE"
    if [[ "$RUN_DIR" != "$CACHE/run-$PORT" ]]; then
        echo "$RUN_DIR" >"$POINTER"
    else
        rm -f "$POINTER"
    fi
    write_config
    local cp="$LIBS/*"
    local log4j="-Dlog4j2.configurationFile=$RUN_DIR/log4j2.properties"
    # With a static controller.quorum.voters, Kafka 4.x formats without --standalone or
    # --initial-controllers (those are for a dynamic quorum, controller.quorum.bootstrap.servers).
    if ! java -Xmx256m "-Dlog4j2.configurationFile=$(tool_log_config)" -cp "$cp" kafka.tools.StorageTool format \
        -t "$(new_cluster_id)" -c "$RUN_DIR/server.properties" >"$RUN_DIR/format.log" 2>&1; then
        cat "$RUN_DIR/format.log" >&2
        die "formatting the storage failed"
    fi
    # setsid + nohup: the broker outlives this script and the caller's terminal or process group;
    # 9>&- keeps the port lock out of it (else stop would wait on the broker's own copy).
    # shellcheck disable=SC2086
    setsid nohup java $HEAP $JVM_OPTS "-Xlog:gc*:file=$RUN_DIR/gc.log:time,tags:filecount=2,filesize=20M" \
        -Djava.awt.headless=true "$log4j" -cp "$cp" \
        kafka.Kafka "$RUN_DIR/server.properties" >"$LOG_FILE" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
    local deadline=$((SECONDS + TIMEOUT))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "---- tail of $LOG_FILE ----" >&2
            tail -n 60 "$LOG_FILE" >&2 || true
            die "the broker exited during startup"
        fi
        # Ready: the server logged its start line and the client port accepts connections.
        if grep -q "Kafka Server started" "$LOG_FILE" 2>/dev/null && port_open "$PORT"; then
            break
        fi
        if ((SECONDS >= deadline)); then
            echo "---- tail of $LOG_FILE ----" >&2
            tail -n 60 "$LOG_FILE" >&2 || true
            kill -KILL "$pid" 2>/dev/null || true
            die "the broker was not ready within ${TIMEOUT}s"
        fi
        sleep 0.2
    done
    echo "127.0.0.1:$PORT"
}

cmd_stop() {
    set_port "${1:-}"
    [[ -d "$RUN_DIR" ]] || return 0
    lock_port
    local pid
    if pid="$(running_pid)"; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "kafka.sh: broker $pid did not stop in 20s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 25; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
        fi
    fi
    rm -rf "$RUN_DIR"
    if [[ -f "$POINTER" && "$(cat "$POINTER")" == "$RUN_DIR" ]]; then
        rm -f "$POINTER"
    fi
}

cmd_status() {
    set_port "${1:-}"
    local pid
    if pid="$(running_pid)"; then
        echo "running 127.0.0.1:$PORT pid $pid ($RUN_DIR)"
    else
        echo "stopped 127.0.0.1:$PORT"
        return 1
    fi
}

# A log4j2 config for the CLI classes: warnings only, to stderr. Prints its path.
tool_log_config() {
    local conf="$CACHE/tool-log4j2.properties"
    if [[ ! -f "$conf" ]]; then
        printf '%s\n' 'status = warn' 'shutdownHook = disable' \
            'appender.err.type = Console' 'appender.err.name = ERR' \
            'appender.err.target = SYSTEM_ERR' 'appender.err.layout.type = PatternLayout' \
            'appender.err.layout.pattern = [%d] %p %m (%c)%n' 'rootLogger.level = WARN' \
            'rootLogger.appenderRef.err.ref = ERR' >"$conf.$$"
        mv "$conf.$$" "$conf"
    fi
    echo "$conf"
}

# Run a Kafka CLI class with the cached jars.
cmd_tool() {
    [[ $# -ge 1 ]] || die "tool: name a class, e.g. org.apache.kafka.tools.TopicCommand"
    cmd_fetch
    local cls="$1"
    shift
    local conf
    conf="$(tool_log_config)"
    exec java -Xmx256m -Dlog4j2.configurationFile="$conf" -cp "$LIBS/*" "$cls" "$@"
}

main() {
    [[ $# -ge 1 ]] || usage
    local cmd="$1"
    shift
    case "$cmd" in
    fetch) cmd_fetch ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    tool) cmd_tool "$@" ;;
    -h | --help | help) usage ;;
    *) usage ;;
    esac
}

main "$@"
