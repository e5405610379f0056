#!/usr/bin/env bash
# Local services for the tests and the reactor: RabbitMQ and FerretDB (the MongoDB-wire server).
#
#   scripts/services.sh start|stop|status [rabbitmq|ferretdb|all]      (default: all)
#
# start   installs what is missing, starts what is not running, and prints to STDOUT only
#         eval-able lines:  export MONGODB_URI=…  /  export AMQP_URL=…   (diagnostics: STDERR)
# stop    stops only what this script started (PID files in the state directory); a broker or
#         server started by anyone else is left alone. FerretDB data is kept.
# status  prints each service's state and URL; exit 0 only if every service answers.
#
# Environment:
#   REACTOR_SERVICES_DIR  state directory (PID files, logs, FerretDB data); default <repo>/.services
#   FERRETDB_PORT         FerretDB listen port on 127.0.0.1 (default 27017)
#   MONGODB_URI           when set, FerretDB is not managed at all and this URI is printed
#   AMQP_URL              when set, RabbitMQ is not managed at all and this URL is printed
#   RABBITMQ_NODENAME, RABBITMQ_NODE_PORT   RabbitMQ's own variables (a second node for tests)
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${REACTOR_SERVICES_DIR:-$ROOT/.services}
FERRETDB_PORT=${FERRETDB_PORT:-27017}
FERRETDB_VERSION=v1.24.2
FERRETDB_DIR=$STATE/ferretdb
FERRETDB_PIDFILE=$STATE/ferretdb.pid
FERRETDB_LOG=$STATE/ferretdb.log
FERRETDB_TIMEOUT=60
RABBITMQ_PIDFILE=$STATE/rabbitmq.pid   # written only when this script started the broker
RABBITMQ_LOG=$STATE/rabbitmq-start.log
RABBITMQ_TIMEOUT=120
RABBITMQ_PLUGIN=rabbitmq_consistent_hash_exchange
# RABBITMQ_NODE_PORT is RabbitMQ's own variable: the broker started here listens on it too.
DEFAULT_AMQP_URL="amqp://guest:guest@127.0.0.1:${RABBITMQ_NODE_PORT:-5672}/%2F"
FERRETDB_URI="mongodb://127.0.0.1:${FERRETDB_PORT}/"

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Hide the password of a URL in diagnostics (the export lines on STDOUT keep it: they are the
# contract with the caller).
masked() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# One export line; quoted only when the value needs it, so simple URLs stay exactly as documented.
export_line() {
    local name=$1 value=$2
    if [[ $value =~ ^[A-Za-z0-9_%/:.@+=,-]*$ ]]; then
        printf 'export %s=%s\n' "$name" "$value"
    else
        printf "export %s='%s'\n" "$name" "${value//\'/\'\\\'\'}"
    fi
}

# PID from a PID file if that process is alive and its command line contains $2; else fail.
owned_pid() {
    local file=$1 pattern=$2 pid
    [[ -f $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern" || return 1
    printf '%s\n' "$pid"
}

# Wait until a PID is gone; SIGKILL it after $2 seconds of SIGTERM having no effect.
stop_pid() {
    local pid=$1 grace=$2 name=$3 waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= grace * 10)); then
            log "$name (pid $pid) ignored SIGTERM for ${grace}s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

APT_UPDATED=0
APT_LOG=$STATE/apt.log
# apt output goes to a file: a package's postinst may start a daemon that would otherwise hold
# the caller's stdout/stderr pipes (and our lock, fd 9) open forever.
apt_install() {
    [[ $(id -u) -eq 0 ]] || die "$1 is not installed and installing it needs root: run as root, or install it yourself (apt-get install -y $1)"
    command -v apt-get >/dev/null || die "$1 is not installed and there is no apt-get to install it"
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update >>"$APT_LOG" 2>&1 9>&- </dev/null ||
            { tail -n 20 "$APT_LOG" >&2; die "apt-get update failed (log $APT_LOG)"; }
        APT_UPDATED=1
    fi
    log "apt-get install -y $1"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >>"$APT_LOG" 2>&1 9>&- </dev/null ||
        { tail -n 20 "$APT_LOG" >&2; die "apt-get install -y $1 failed (log $APT_LOG)"; }
}

# ---------------------------------------------------------------------------------- RabbitMQ

rabbit_ping() { command -v rabbitmq-diagnostics >/dev/null && rabbitmq-diagnostics -q ping -t 5 >/dev/null 2>&1; }

# Run a command as the rabbitmq user (to test what the broker itself may write).
as_rabbitmq() {
    if [[ $(id -un) == rabbitmq ]]; then "$@"; else runuser -u rabbitmq -- "$@"; fi
}

# Enable the plugin on a running broker we did not start (ours got it offline before start).
rabbit_plugin_online() {
    if ! rabbitmq-plugins -q list -e -m 2>/dev/null | grep -qx "$RABBITMQ_PLUGIN"; then
        log "enabling $RABBITMQ_PLUGIN on the running broker"
        rabbitmq-plugins -q enable "$RABBITMQ_PLUGIN" >&2 ||
            log "warning: could not enable $RABBITMQ_PLUGIN on the running broker"
    fi
}

rabbit_start() {
    if [[ -n ${AMQP_URL:-} ]]; then
        log "rabbitmq: AMQP_URL is set, not managing a broker: $(masked "$AMQP_URL")"
        EXPORTS+=("$(export_line AMQP_URL "$AMQP_URL")")
        return
    fi
    local pid
    if rabbit_ping; then
        if pid=$(owned_pid "$RABBITMQ_PIDFILE" beam); then
            log "rabbitmq: already running (started by this script, pid $pid)"
        else
            log "rabbitmq: reusing the broker that is already running (not started by this script: stop leaves it alone)"
            rabbit_plugin_online
        fi
        rabbitmqctl -q await_startup --timeout "$RABBITMQ_TIMEOUT" >&2 ||
            die "RabbitMQ answers ping but did not finish booting within ${RABBITMQ_TIMEOUT}s"
        EXPORTS+=("$(export_line AMQP_URL "$DEFAULT_AMQP_URL")")
        return
    fi
    rm -f "$RABBITMQ_PIDFILE"
    if ! command -v rabbitmq-server >/dev/null; then
        apt_install rabbitmq-server
        # The package's postinst may or may not have started a broker (no systemd in containers).
        if rabbit_ping; then
            log "rabbitmq: the package installation started a broker; using it (not owned by this script)"
            rabbit_plugin_online
            rabbitmqctl -q await_startup --timeout "$RABBITMQ_TIMEOUT" >&2 ||
                die "RabbitMQ answers ping but did not finish booting within ${RABBITMQ_TIMEOUT}s"
            EXPORTS+=("$(export_line AMQP_URL "$DEFAULT_AMQP_URL")")
            return
        fi
    fi
    [[ $(id -u) -eq 0 || $(id -un) == rabbitmq ]] ||
        die "starting RabbitMQ needs root (or the rabbitmq user); start a broker yourself and set AMQP_URL"

    log "rabbitmq: enabling $RABBITMQ_PLUGIN (offline)"
    rabbitmq-plugins -q enable --offline "$RABBITMQ_PLUGIN" >&2

    # The broker runs as the rabbitmq user, so its own PID file must live where that user can
    # write; the state directory may sit below a home it cannot enter, hence the fallback.
    local rdir=$STATE/rabbitmq
    mkdir -p "$rdir"
    chown rabbitmq:rabbitmq "$rdir" 2>/dev/null || true
    if ! as_rabbitmq test -w "$rdir" 2>/dev/null; then
        rdir=$(cd ~rabbitmq && pwd)/reactor-services
        mkdir -p "$rdir"
        chown rabbitmq:rabbitmq "$rdir"
    fi
    local broker_pidfile=$rdir/rabbitmq.pid
    rm -f "$broker_pidfile"

    log "rabbitmq: starting (rabbitmq-server -detached; log $RABBITMQ_LOG)"
    # 9>&-: the broker must not inherit our lock.
    RABBITMQ_PID_FILE=$broker_pidfile rabbitmq-server -detached >>"$RABBITMQ_LOG" 2>&1 9>&- </dev/null ||
        log "rabbitmq: rabbitmq-server -detached exited non-zero (see $RABBITMQ_LOG); waiting anyway"

    # ping fails until the node has registered with epmd, so it has to be polled.
    local deadline=$((SECONDS + RABBITMQ_TIMEOUT))
    until rabbit_ping; do
        ((SECONDS < deadline)) ||
            die "RabbitMQ did not answer 'rabbitmq-diagnostics ping' within ${RABBITMQ_TIMEOUT}s; see $RABBITMQ_LOG and /var/log/rabbitmq/"
        sleep 1
    done
    # ping answers once the Erlang node is up; AMQP is served only after the boot completes.
    rabbitmqctl -q await_startup --timeout $((deadline - SECONDS > 5 ? deadline - SECONDS : 5)) >&2 ||
        die "RabbitMQ answers ping but did not finish booting; see /var/log/rabbitmq/"
    if pid=$(owned_pid "$broker_pidfile" beam); then
        printf '%s\n' "$pid" >"$RABBITMQ_PIDFILE"
        log "rabbitmq: running (pid $pid)"
    else
        # Another broker won the race for the node name: use it, but never claim it.
        log "rabbitmq: a broker answers but it is not the one this script started; not claiming it"
    fi
    EXPORTS+=("$(export_line AMQP_URL "$DEFAULT_AMQP_URL")")
}

rabbit_stop() {
    local pid
    if pid=$(owned_pid "$RABBITMQ_PIDFILE" beam); then
        log "rabbitmq: stopping pid $pid"
        # beam turns SIGTERM into an orderly node shutdown; by PID so only our broker is hit.
        stop_pid "$pid" 60 rabbitmq
        log "rabbitmq: stopped"
    elif rabbit_ping; then
        log "rabbitmq: running but not started by this script: left alone"
    else
        log "rabbitmq: not running"
    fi
    rm -f "$RABBITMQ_PIDFILE"
}

rabbit_status() {
    local url=${AMQP_URL:-$DEFAULT_AMQP_URL} how
    if [[ -n ${AMQP_URL:-} ]]; then
        if python3 - "$AMQP_URL" >/dev/null 2>&1 <<'PY'; then
import sys, pika
pika.BlockingConnection(pika.URLParameters(sys.argv[1])).close()
PY
            echo "rabbitmq: answering (external, AMQP_URL) $(masked "$url")"; return 0
        fi
        echo "rabbitmq: NOT answering (external, AMQP_URL) $(masked "$url")"; return 1
    fi
    if rabbit_ping; then
        how="not started by this script"
        owned_pid "$RABBITMQ_PIDFILE" beam >/dev/null && how="started by this script, pid $(cat "$RABBITMQ_PIDFILE")"
        echo "rabbitmq: running ($how) $(masked "$url")"
        return 0
    fi
    echo "rabbitmq: not running $(masked "$url")"
    return 1
}

# ---------------------------------------------------------------------------------- FerretDB

# A MongoDB ping with pymongo when it is importable; else only a TCP connect.
mongo_ping() {
    local uri=$1
    if python3 -c 'import pymongo' 2>/dev/null; then
        python3 - "$uri" >/dev/null 2>&1 <<'PY'
import sys, pymongo
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)
try:
    client.admin.command("ping")
finally:
    client.close()
PY
    else
        # host:port of the first host in the URI (default port 27017)
        local hostport
        hostport=$(sed -E 's#^mongodb://([^@/]*@)?([^/,?]*).*#\2#' <<<"$uri")
        [[ $hostport == *:* ]] || hostport=$hostport:27017
        port_open "${hostport%:*}" "${hostport##*:}"
    fi
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# A FerretDB binary that actually runs. Binaries made by `go install …@v1.24.2` panic at start-up
# ("Invalid build/version/version.txt", FerretDB issue #2982: the version file is generated at
# release time and absent from the Go module), so each candidate is tried, and a working one is
# built from the module source with that file written, into the state directory.
ferretdb_binary() {
    local bin candidates=("$STATE/bin/ferretdb")
    bin=$(command -v ferretdb) && candidates+=("$bin")
    command -v go >/dev/null && candidates+=("$(go env GOPATH)/bin/ferretdb")
    for bin in $(printf '%s\n' "${candidates[@]}" | awk '!seen[$0]++'); do
        if [[ -x $bin ]] && "$bin" --version >/dev/null 2>&1; then
            printf '%s\n' "$bin"
            return
        fi
        [[ -x $bin ]] && log "ferretdb: '$bin --version' fails (a plain 'go install' build?); not using it"
    done
    command -v go >/dev/null ||
        die "no working ferretdb and Go is not available to build one; install FerretDB $FERRETDB_VERSION, or set MONGODB_URI to an existing MongoDB"
    ferretdb_build
    printf '%s\n' "$STATE/bin/ferretdb"
}

ferretdb_build() {
    local module=github.com/FerretDB/FerretDB@$FERRETDB_VERSION src work
    log "ferretdb: building $module into $STATE/bin/ferretdb (takes a minute or two; log $STATE/go-build.log)"
    src=$(go mod download -json "$module" 2>>"$STATE/go-build.log" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p') && [[ -d $src ]] ||
        { tail -n 20 "$STATE/go-build.log" >&2; die "go mod download $module failed"; }
    work=$(mktemp -d "${TMPDIR:-/tmp}/ferretdb-src.XXXXXX")
    cp -R "$src/." "$work/"
    chmod -R u+w "$work"
    printf '%s\n' "$FERRETDB_VERSION" >"$work/build/version/version.txt"
    mkdir -p "$STATE/bin"
    if ! (cd "$work" && GOFLAGS=-mod=mod go build -trimpath -o "$STATE/bin/ferretdb.new" ./cmd/ferretdb) \
        >>"$STATE/go-build.log" 2>&1 9>&-; then
        rm -rf "$work"
        tail -n 20 "$STATE/go-build.log" >&2
        die "building FerretDB $FERRETDB_VERSION failed (log $STATE/go-build.log)"
    fi
    rm -rf "$work"
    mv -f "$STATE/bin/ferretdb.new" "$STATE/bin/ferretdb"
}

# Poll until FerretDB answers ping; fail with the end of its log if it dies or times out.
ferret_wait() {
    local pid=$1 deadline=$((SECONDS + FERRETDB_TIMEOUT))
    until mongo_ping "$FERRETDB_URI"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$FERRETDB_LOG" >&2 || true
            rm -f "$FERRETDB_PIDFILE"
            die "FerretDB (pid $pid) exited during start-up; log above ($FERRETDB_LOG)"
        fi
        ((SECONDS < deadline)) ||
            die "FerretDB (pid $pid) did not answer ping on $FERRETDB_URI within ${FERRETDB_TIMEOUT}s; see $FERRETDB_LOG"
        sleep 0.2
    done
}

ferret_start() {
    if [[ -n ${MONGODB_URI:-} ]]; then
        log "ferretdb: MONGODB_URI is set, not starting FerretDB: $(masked "$MONGODB_URI")"
        EXPORTS+=("$(export_line MONGODB_URI "$MONGODB_URI")")
        return
    fi
    local pid bin
    if pid=$(owned_pid "$FERRETDB_PIDFILE" ferretdb); then
        ferret_wait "$pid"
        log "ferretdb: already running (started by this script, pid $pid) on $FERRETDB_URI"
        EXPORTS+=("$(export_line MONGODB_URI "$FERRETDB_URI")")
        return
    fi
    rm -f "$FERRETDB_PIDFILE"
    port_open 127.0.0.1 "$FERRETDB_PORT" &&
        die "127.0.0.1:$FERRETDB_PORT is already in use by a process this script did not start; set FERRETDB_PORT to a free port, or MONGODB_URI to use that server"
    bin=$(ferretdb_binary)
    mkdir -p "$FERRETDB_DIR"
    log "ferretdb: starting $bin on 127.0.0.1:$FERRETDB_PORT (data $FERRETDB_DIR, log $FERRETDB_LOG)"
    # setsid: its own session, so a Ctrl-C or the end of the calling test run does not kill it.
    # Without job control the child is no group leader, so setsid and nohup exec in place and
    # $! is FerretDB's own PID.
    setsid nohup "$bin" --handler=sqlite --sqlite-url="file:$FERRETDB_DIR/" \
        --state-dir="$FERRETDB_DIR" --listen-addr="127.0.0.1:$FERRETDB_PORT" \
        --telemetry=disable --debug-addr=- >>"$FERRETDB_LOG" 2>&1 </dev/null 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$FERRETDB_PIDFILE"
    ferret_wait "$pid"
    log "ferretdb: running (pid $pid) on $FERRETDB_URI"
    EXPORTS+=("$(export_line MONGODB_URI "$FERRETDB_URI")")
}

ferret_stop() {
    local pid
    if pid=$(owned_pid "$FERRETDB_PIDFILE" ferretdb); then
        log "ferretdb: stopping pid $pid (data kept in $FERRETDB_DIR)"
        stop_pid "$pid" 30 ferretdb
        log "ferretdb: stopped"
    elif [[ -n ${MONGODB_URI:-} ]]; then
        log "ferretdb: MONGODB_URI is set; that server is not managed here: left alone"
    else
        log "ferretdb: not running (nothing started by this script)"
    fi
    rm -f "$FERRETDB_PIDFILE"
}

ferret_status() {
    local uri=${MONGODB_URI:-$FERRETDB_URI} how="not started by this script"
    if [[ -n ${MONGODB_URI:-} ]]; then
        how="external, MONGODB_URI"
    elif owned_pid "$FERRETDB_PIDFILE" ferretdb >/dev/null; then
        how="started by this script, pid $(cat "$FERRETDB_PIDFILE")"
    fi
    if mongo_ping "$uri"; then
        echo "ferretdb: answering ($how) $(masked "$uri")"
        return 0
    fi
    [[ $how == "not started by this script" ]] && how="not running"
    echo "ferretdb: NOT answering ($how) $(masked "$uri")"
    return 1
}

# ---------------------------------------------------------------------------------- main

usage() { echo "usage: $0 start|stop|status [rabbitmq|ferretdb|all]" >&2; exit 2; }

action=${1:-}
target=${2:-all}
[[ $# -le 2 ]] || usage
case $target in rabbitmq | ferretdb | all) ;; *) usage ;; esac
services=(ferretdb rabbitmq)
[[ $target == all ]] || services=("$target")

case $action in
    start | stop)
        mkdir -p "$STATE"
        # Serialise concurrent callers (parallel test sessions) on one state directory.
        exec 9>"$STATE/.lock"
        flock -w 600 9 || die "another services.sh holds $STATE/.lock"
        EXPORTS=()
        for svc in "${services[@]}"; do
            case $svc in
                ferretdb) "ferret_$action" ;;
                rabbitmq) "rabbit_$action" ;;
            esac
        done
        # Only after every service is up, so a failed start prints no half-valid environment.
        if [[ $action == start ]]; then printf '%s\n' "${EXPORTS[@]}"; fi
        ;;
    status)
        rc=0
        for svc in "${services[@]}"; do
            case $svc in
                ferretdb) ferret_status || rc=1 ;;
                rabbitmq) rabbit_status || rc=1 ;;
            esac
        done
        exit "$rc"
        ;;
    *) usage ;;
esac
