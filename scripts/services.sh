#!/usr/bin/env bash
# Local services for the tests and the reactor: RabbitMQ and SecantusDB (the MongoDB-wire server).
#
#   scripts/services.sh start|stop|status [rabbitmq|secantusdb|all]    (default: all)
#   scripts/services.sh binary secantusdb   prints the SecantusDB server's path (built if needed)
#
# start   installs what is missing, starts what is not running, and prints to STDOUT only
#         eval-able lines:  export MONGODB_URI=…  /  export AMQP_URL=…   (diagnostics: STDERR)
# stop    stops only what this script started (PID files in the state directory); a broker or
#         server started by anyone else is left alone. SecantusDB data is kept.
# status  prints each service's state and URL; exit 0 only if every service answers.
#
# Environment:
#   REACTOR_SERVICES_DIR  state directory (PID files, logs, SecantusDB data); default
#                         <repo>/.services
#   SECANTUS_PORT         SecantusDB listen port on 127.0.0.1 (default 27017)
#   SECANTUS_BIN          a SecantusDB server binary to use (secantusd-rs or secantusd-py): no build
#   SECANTUS_CACHE_DIR    where builds are kept, shared by every clone on the machine;
#                         default ${XDG_CACHE_HOME:-~/.cache}/pipelinejobs-reactor
#   SECANTUS_CACHE_SIZE   the server's WiredTiger cache (default 256M)
#   MONGODB_URI           when set, SecantusDB is not managed at all and this URI is printed
#   AMQP_URL              when set, RabbitMQ is not managed at all and this URL is printed
#   RABBITMQ_NODENAME, RABBITMQ_NODE_PORT   RabbitMQ's own variables (a second node for tests)
#
#   scripts/services.sh start|stop|status rabbitmq-cluster     (never part of `all`)
#
# A 3-node RabbitMQ cluster rc1..rc3@<short host> (quorum queues, failover tests); start prints
#   export AMQP_CLUSTER_URLS=<url1>,<url2>,<url3>  and  export AMQP_CLUSTER_NODES=<n1>,<n2>,<n3>
#   RABBITMQ_CLUSTER_PORT       AMQP port of rc1 on 127.0.0.1, rcN uses +N-1 (default 5681)
#   RABBITMQ_CLUSTER_DIST_PORT  Erlang distribution port of rc1, rcN uses +N-1 (default 25681)
#   AMQP_CLUSTER_URLS           when set, no cluster is managed and this (and AMQP_CLUSTER_NODES)
#                               is printed
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${REACTOR_SERVICES_DIR:-$ROOT/.services}
SECANTUS_PORT=${SECANTUS_PORT:-27017}
# A pre-release: cargo needs the exact version. Bump it here and the cache key follows.
SECANTUS_VERSION=0.5.3-beta.196
SECANTUS_CACHE=${SECANTUS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pipelinejobs-reactor}
SECANTUS_ROOT=$SECANTUS_CACHE/secantus-mdb-$SECANTUS_VERSION   # cargo install --root
SECANTUS_RS_BIN=$SECANTUS_ROOT/bin/secantusd-rs
SECANTUS_BUILD_LOG=$SECANTUS_CACHE/secantus-mdb-$SECANTUS_VERSION.build.log
SECANTUS_PY_VENV=$SECANTUS_CACHE/secantusdb-py    # the PyPI fallback, used if cargo fails
SECANTUS_PY_BIN=$SECANTUS_PY_VENV/bin/secantusd-py
SECANTUS_PY_LOG=$SECANTUS_CACHE/secantusdb-py.install.log
SECANTUS_CACHE_SIZE=${SECANTUS_CACHE_SIZE:-256M}
SECANTUS_DIR=$STATE/secantusdb
SECANTUS_PIDFILE=$STATE/secantusdb.pid
SECANTUS_LOG=$STATE/secantusdb.log
SECANTUS_TIMEOUT=60
RABBITMQ_PIDFILE=$STATE/rabbitmq.pid   # written only when this script started the broker
RABBITMQ_LOG=$STATE/rabbitmq-start.log
RABBITMQ_TIMEOUT=120
RABBITMQ_PLUGIN=rabbitmq_consistent_hash_exchange
# RABBITMQ_NODE_PORT is RabbitMQ's own variable: the broker started here listens on it too.
DEFAULT_AMQP_URL="amqp://guest:guest@127.0.0.1:${RABBITMQ_NODE_PORT:-5672}/%2F"
SECANTUS_URI="mongodb://127.0.0.1:${SECANTUS_PORT}/"

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

# ---------------------------------------------------------------------------------- SecantusDB

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

# Who listens on a local TCP port, e.g. `mongod (pid 6268)`, for error messages.
port_holder() {
    local users
    users=$(ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'users:((.*))' | head -n 1) || true
    if [[ $users =~ \(\"([^\"]+)\",pid=([0-9]+) ]]; then
        printf '%s (pid %s)\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    else
        printf 'an unidentified process\n'
    fi
}

# The server's own version (buildInfo.secantusVersion), for status; empty if unknown.
secantus_version_of() {
    python3 - "$1" 2>/dev/null <<'PY' || true
import sys, pymongo
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)
try:
    print(client.admin.command("buildInfo").get("secantusVersion", ""))
finally:
    client.close()
PY
}

# A server binary runs when it answers --help (secantusd-py has no --version).
secantus_runs() { [[ -x $1 ]] && "$1" --help >/dev/null 2>&1 </dev/null; }

# Print the path of a SecantusDB server that runs, building it when none exists:
#   $SECANTUS_BIN if set (it must run); else the cargo build of $SECANTUS_VERSION in the cache;
#   else an earlier PyPI fallback in the cache; else build with cargo; if that fails, the PyPI
#   fallback. The cache sits outside the clone, so fresh clones on one machine share one build.
secantus_binary() {
    if [[ -n ${SECANTUS_BIN:-} ]]; then
        secantus_runs "$SECANTUS_BIN" ||
            die "SECANTUS_BIN=$SECANTUS_BIN is not an executable SecantusDB server ('$SECANTUS_BIN --help' fails)"
        printf '%s\n' "$SECANTUS_BIN"
        return
    fi
    mkdir -p "$SECANTUS_CACHE"
    # Two clones (two state directories) may build at once; they take turns on the cache.
    exec 8>"$SECANTUS_CACHE/.build.lock"
    flock -w 1800 8 || die "another build holds $SECANTUS_CACHE/.build.lock for 30 minutes"
    if "$SECANTUS_RS_BIN" --version 2>/dev/null </dev/null | grep -qF "$SECANTUS_VERSION"; then
        printf '%s\n' "$SECANTUS_RS_BIN"
        return
    fi
    if secantus_runs "$SECANTUS_PY_BIN"; then
        log "secantusdb: using the PyPI fallback $SECANTUS_PY_BIN (an earlier cargo build failed; delete $SECANTUS_PY_VENV to try cargo again)"
        printf '%s\n' "$SECANTUS_PY_BIN"
        return
    fi
    if secantus_cargo_build; then
        printf '%s\n' "$SECANTUS_RS_BIN"
        return
    fi
    log "secantusdb: falling back to the PyPI package secantusdb (Python server secantusd-py: slower, same engine)"
    secantus_pip_install ||
        die "no SecantusDB server: the cargo build failed (log $SECANTUS_BUILD_LOG) and so did the PyPI fallback (log $SECANTUS_PY_LOG); set SECANTUS_BIN to a server binary, or MONGODB_URI to an existing MongoDB"
    printf '%s\n' "$SECANTUS_PY_BIN"
}

# cargo install of the pinned crate into the cache; fails (after saying why) without cargo.
secantus_cargo_build() {
    local cargo
    # rustup puts cargo in ~/.cargo/bin, which a non-login shell (CI) may not have on PATH.
    cargo=$(command -v cargo) || cargo=${CARGO_HOME:-$HOME/.cargo}/bin/cargo
    if [[ ! -x $cargo ]]; then
        log "secantusdb: cargo is not installed, so secantus-mdb cannot be built (get it with rustup, https://rustup.rs, or apt-get install cargo)"
        return 1
    fi
    log "secantusdb: building secantus-mdb $SECANTUS_VERSION with cargo into $SECANTUS_ROOT (4-8 minutes on 2 cores; log $SECANTUS_BUILD_LOG)"
    # --ignore-rust-version: the crate declares a newer rust-version than it needs; the pinned
    # pre-release builds and runs with the toolchain here. 8>&- 9>&-: cargo must not hold locks.
    if "$cargo" install --ignore-rust-version secantus-mdb --version "$SECANTUS_VERSION" \
        --root "$SECANTUS_ROOT" >"$SECANTUS_BUILD_LOG" 2>&1 </dev/null 8>&- 9>&- &&
        "$SECANTUS_RS_BIN" --version >/dev/null 2>&1 </dev/null; then
        log "secantusdb: built $SECANTUS_RS_BIN"
        return 0
    fi
    tail -n 20 "$SECANTUS_BUILD_LOG" >&2 || true
    log "secantusdb: building secantus-mdb $SECANTUS_VERSION failed (log $SECANTUS_BUILD_LOG)"
    return 1
}

# The PyPI package in a virtual environment of its own in the cache (never the caller's Python).
secantus_pip_install() {
    log "secantusdb: installing the PyPI package secantusdb into $SECANTUS_PY_VENV (log $SECANTUS_PY_LOG)"
    rm -rf "$SECANTUS_PY_VENV"
    # --pre: every secantusdb release so far is a pre-release.
    python3 -m venv "$SECANTUS_PY_VENV" >"$SECANTUS_PY_LOG" 2>&1 8>&- 9>&- </dev/null &&
        "$SECANTUS_PY_VENV/bin/python" -m pip install --pre secantusdb >>"$SECANTUS_PY_LOG" 2>&1 8>&- 9>&- </dev/null &&
        secantus_runs "$SECANTUS_PY_BIN" && return 0
    tail -n 20 "$SECANTUS_PY_LOG" >&2 || true
    rm -rf "$SECANTUS_PY_VENV"
    return 1
}

# Poll until SecantusDB answers ping; fail with the end of its log if it dies or times out.
secantus_wait() {
    local pid=$1 deadline=$((SECONDS + SECANTUS_TIMEOUT))
    until mongo_ping "$SECANTUS_URI"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$SECANTUS_LOG" >&2 || true
            rm -f "$SECANTUS_PIDFILE"
            die "SecantusDB (pid $pid) exited during start-up; log above ($SECANTUS_LOG)"
        fi
        ((SECONDS < deadline)) ||
            die "SecantusDB (pid $pid) did not answer ping on $SECANTUS_URI within ${SECANTUS_TIMEOUT}s; see $SECANTUS_LOG"
        sleep 0.2
    done
}

secantus_start() {
    if [[ -n ${MONGODB_URI:-} ]]; then
        log "secantusdb: MONGODB_URI is set, not starting SecantusDB: $(masked "$MONGODB_URI")"
        EXPORTS+=("$(export_line MONGODB_URI "$MONGODB_URI")")
        return
    fi
    local pid bin
    if pid=$(owned_pid "$SECANTUS_PIDFILE" secantusd); then
        secantus_wait "$pid"
        log "secantusdb: already running (started by this script, pid $pid) on $SECANTUS_URI"
        EXPORTS+=("$(export_line MONGODB_URI "$SECANTUS_URI")")
        return
    fi
    rm -f "$SECANTUS_PIDFILE"
    port_open 127.0.0.1 "$SECANTUS_PORT" &&
        die "127.0.0.1:$SECANTUS_PORT is already in use by $(port_holder "$SECANTUS_PORT"), which this script did not start; stop it, set SECANTUS_PORT to a free port, or set MONGODB_URI to use that server"
    bin=$(secantus_binary)
    mkdir -p "$SECANTUS_DIR"
    log "secantusdb: starting $bin on 127.0.0.1:$SECANTUS_PORT (data $SECANTUS_DIR, log $SECANTUS_LOG)"
    # setsid: its own session, so a Ctrl-C or the end of the calling test run does not kill it.
    # Without job control the child is no group leader, so setsid and nohup exec in place and
    # $! is the server's own PID. --sync-on-commit makes a j:true write an fsync (the reactor
    # writes with journal: true); --cache-size keeps it small (secantusd-rs defaults to 4G).
    setsid nohup "$bin" --host 127.0.0.1 --port "$SECANTUS_PORT" --storage-path "$SECANTUS_DIR" \
        --sync-on-commit --cache-size "$SECANTUS_CACHE_SIZE" \
        >>"$SECANTUS_LOG" 2>&1 </dev/null 8>&- 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$SECANTUS_PIDFILE"
    secantus_wait "$pid"
    log "secantusdb: running (pid $pid) on $SECANTUS_URI"
    EXPORTS+=("$(export_line MONGODB_URI "$SECANTUS_URI")")
}

secantus_stop() {
    local pid
    if pid=$(owned_pid "$SECANTUS_PIDFILE" secantusd); then
        log "secantusdb: stopping pid $pid (data kept in $SECANTUS_DIR)"
        stop_pid "$pid" 30 secantusdb
        log "secantusdb: stopped"
    elif [[ -n ${MONGODB_URI:-} ]]; then
        log "secantusdb: MONGODB_URI is set; that server is not managed here: left alone"
    else
        log "secantusdb: not running (nothing started by this script)"
    fi
    rm -f "$SECANTUS_PIDFILE"
}

secantus_status() {
    local uri=${MONGODB_URI:-$SECANTUS_URI} how="not started by this script" version
    if [[ -n ${MONGODB_URI:-} ]]; then
        how="external, MONGODB_URI"
    elif owned_pid "$SECANTUS_PIDFILE" secantusd >/dev/null; then
        how="started by this script, pid $(cat "$SECANTUS_PIDFILE")"
    fi
    if mongo_ping "$uri"; then
        version=$(secantus_version_of "$uri")
        echo "secantusdb: answering ($how${version:+, SecantusDB $version}) $(masked "$uri")"
        return 0
    fi
    [[ $how == "not started by this script" ]] && how="not running"
    echo "secantusdb: NOT answering ($how) $(masked "$uri")"
    return 1
}

# ------------------------------------------------------------------------- RabbitMQ cluster
# Three RabbitMQ nodes rc1..rc3@<short host> on this machine, for quorum queues and failover
# tests. Only `start rabbitmq-cluster` starts them (never `start` / `all`), and the broker
# rabbit@<host> above is not touched. Each node has its own AMQP and distribution ports, data
# (mnesia), log, feature-flags, enabled-plugins and PID files; all run as the rabbitmq user, so
# they share its Erlang cookie. rc2 and rc3 join rc1. A node that is down (stopped, or killed
# by a test) is started again with the same settings and rejoins by itself: its data says
# which cluster it belongs to.
CLUSTER_SIZE=3
CLUSTER_PORT=${RABBITMQ_CLUSTER_PORT:-5681}            # AMQP port of rc1; rcN uses +N-1
CLUSTER_DIST_PORT=${RABBITMQ_CLUSTER_DIST_PORT:-25681} # Erlang distribution port of rc1
CLUSTER_HOST=$(hostname -s)
CLUSTER_LOG=$STATE/rabbitmq-cluster-start.log

cluster_node() { printf 'rc%d@%s\n' "$1" "$CLUSTER_HOST"; }
cluster_url() { printf 'amqp://guest:guest@127.0.0.1:%d/%%2F\n' $((CLUSTER_PORT + $1 - 1)); }
# Written only when this script started the node (so stop never touches another's node).
cluster_pidfile() { printf '%s/rabbitmq-cluster/rc%d.pid\n' "$STATE" "$1"; }
cluster_ping() { rabbitmq-diagnostics -q -n "$(cluster_node "$1")" ping -t 5 >/dev/null 2>&1; }

cluster_list() { local IFS=,; printf '%s\n' "$*"; }

# Where the nodes keep their files: below the state directory when the rabbitmq user can
# write there, else below its home (the state directory may sit where it cannot enter).
cluster_base() {
    local dir=$STATE/rabbitmq-cluster
    mkdir -p "$dir"
    chown rabbitmq:rabbitmq "$dir" 2>/dev/null || true
    if ! as_rabbitmq test -w "$dir" 2>/dev/null; then
        dir=$(cd ~rabbitmq && pwd)/reactor-services/cluster
        mkdir -p "$dir"
        chown rabbitmq:rabbitmq "$dir" "${dir%/cluster}"
    fi
    printf '%s\n' "$dir"
}

# Start node $1 in the background (rabbitmq-server -detached) with files below $2/rcN.
cluster_launch() {
    local n=$1 dir=$2/rc$1 node port
    node=$(cluster_node "$n")
    port=$((CLUSTER_PORT + n - 1))
    mkdir -p "$dir/mnesia" "$dir/log"
    # The plugin is enabled offline: the node reads this file when it boots.
    printf '[%s].\n' "$RABBITMQ_PLUGIN" >"$dir/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$dir"
    rm -f "$dir/rabbitmq.pid" "$(cluster_pidfile "$n")"
    log "rabbitmq-cluster: starting $node on 127.0.0.1:$port (files $dir; log $CLUSTER_LOG)"
    # Debian's wrapper drops to the rabbitmq user with su, which keeps these variables.
    # 9>&-: the node must not inherit our lock.
    env RABBITMQ_NODENAME="$node" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port" \
        RABBITMQ_DIST_PORT=$((CLUSTER_DIST_PORT + n - 1)) RABBITMQ_MNESIA_BASE="$dir/mnesia" \
        RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_FEATURE_FLAGS_FILE="$dir/feature_flags" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_PID_FILE="$dir/rabbitmq.pid" \
        rabbitmq-server -detached >>"$CLUSTER_LOG" 2>&1 9>&- </dev/null ||
        log "rabbitmq-cluster: rabbitmq-server -detached for $node exited non-zero (see $CLUSTER_LOG); waiting anyway"
}

# Wait until node $1 (files below $2) has booted, then record its PID as ours.
cluster_wait() {
    local n=$1 dir=$2/rc$1 node pid deadline=$((SECONDS + RABBITMQ_TIMEOUT))
    node=$(cluster_node "$n")
    until cluster_ping "$n"; do
        ((SECONDS < deadline)) ||
            die "$node did not answer 'rabbitmq-diagnostics ping' within ${RABBITMQ_TIMEOUT}s; see $CLUSTER_LOG and $dir/log/"
        sleep 1
    done
    # Nodes that were clustered wait for their peers at boot; those were launched first.
    rabbitmqctl -q -n "$node" await_startup --timeout $((deadline - SECONDS > 5 ? deadline - SECONDS : 5)) >&2 ||
        die "$node answers ping but did not finish booting; see $dir/log/"
    if pid=$(owned_pid "$dir/rabbitmq.pid" beam); then
        printf '%s\n' "$pid" >"$(cluster_pidfile "$n")"
        log "rabbitmq-cluster: $node running (pid $pid)"
    else
        log "rabbitmq-cluster: $node answers but it is not the node this script started; not claiming it"
    fi
}

# The disc nodes node $1 believes are in its cluster, one a line.
cluster_members() {
    rabbitmqctl -q -n "$1" cluster_status --formatter json 2>/dev/null |
        python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["disk_nodes"]))'
}

# Make every node but rc1 a member of rc1's cluster (a node already in it is left alone).
cluster_join() {
    local n node first members
    first=$(cluster_node 1)
    for ((n = 2; n <= CLUSTER_SIZE; n++)); do
        node=$(cluster_node "$n")
        # Read whole first: grep -q could end the pipe early and fail it (pipefail).
        members=$(cluster_members "$node" || true)
        grep -qxF "$first" <<<"$members" && continue
        log "rabbitmq-cluster: $node joins $first"
        rabbitmqctl -q -n "$node" stop_app >&2 || die "rabbitmqctl -n $node stop_app failed"
        rabbitmqctl -q -n "$node" join_cluster "$first" >&2 ||
            die "rabbitmqctl -n $node join_cluster $first failed; see $CLUSTER_LOG"
        rabbitmqctl -q -n "$node" start_app >&2 || die "rabbitmqctl -n $node start_app failed"
        rabbitmqctl -q -n "$node" await_startup --timeout "$RABBITMQ_TIMEOUT" >&2 ||
            die "$node did not finish booting after joining $first"
    done
}

cluster_exports() {
    local n urls=() nodes=()
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        urls+=("$(cluster_url "$n")")
        nodes+=("$(cluster_node "$n")")
    done
    EXPORTS+=("$(export_line AMQP_CLUSTER_URLS "$(cluster_list "${urls[@]}")")")
    EXPORTS+=("$(export_line AMQP_CLUSTER_NODES "$(cluster_list "${nodes[@]}")")")
}

cluster_start() {
    if [[ -n ${AMQP_CLUSTER_URLS:-} ]]; then
        log "rabbitmq-cluster: AMQP_CLUSTER_URLS is set, not managing a cluster: $(masked "$AMQP_CLUSTER_URLS")"
        EXPORTS+=("$(export_line AMQP_CLUSTER_URLS "$AMQP_CLUSTER_URLS")")
        [[ -z ${AMQP_CLUSTER_NODES:-} ]] ||
            EXPORTS+=("$(export_line AMQP_CLUSTER_NODES "$AMQP_CLUSTER_NODES")")
        return
    fi
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    [[ $(id -u) -eq 0 || $(id -un) == rabbitmq ]] ||
        die "starting a RabbitMQ cluster needs root (or the rabbitmq user); start one yourself and set AMQP_CLUSTER_URLS"
    local n base launched=()
    base=$(cluster_base)
    # Every node that is down is launched before any is waited for: nodes of a cluster that
    # was stopped as a whole wait at boot for the peer that stopped last.
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        if cluster_ping "$n"; then
            log "rabbitmq-cluster: $(cluster_node "$n") already running; reusing it"
        else
            cluster_launch "$n" "$base"
            launched+=("$n")
        fi
    done
    for n in "${launched[@]}"; do cluster_wait "$n" "$base"; done
    cluster_join
    cluster_exports
}

cluster_stop() {
    local n node pid
    # Last node first, so rc1 (which the others join) is the last one down.
    for ((n = CLUSTER_SIZE; n >= 1; n--)); do
        node=$(cluster_node "$n")
        if pid=$(owned_pid "$(cluster_pidfile "$n")" beam); then
            log "rabbitmq-cluster: stopping $node (pid $pid)"
            stop_pid "$pid" 60 "$node"
        elif cluster_ping "$n"; then
            log "rabbitmq-cluster: $node is running but was not started by this script: left alone"
        else
            log "rabbitmq-cluster: $node not running"
        fi
        rm -f "$(cluster_pidfile "$n")"
    done
}

cluster_status() {
    local n node how rc=0 first=""
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        node=$(cluster_node "$n")
        how="not started by this script"
        owned_pid "$(cluster_pidfile "$n")" beam >/dev/null &&
            how="started by this script, pid $(cat "$(cluster_pidfile "$n")")"
        if cluster_ping "$n"; then
            echo "rabbitmq-cluster: $node running ($how) $(masked "$(cluster_url "$n")")"
            [[ -n $first ]] || first=$node
        else
            echo "rabbitmq-cluster: $node NOT running $(masked "$(cluster_url "$n")")"
            rc=1
        fi
    done
    [[ -z $first ]] || echo "rabbitmq-cluster: members (as $first sees them): $(cluster_members "$first" | paste -sd, -)"
    return "$rc"
}

# ---------------------------------------------------------------------------------- main

usage() { echo "usage: $0 start|stop|status [rabbitmq|secantusdb|all] | binary secantusdb | start|stop|status rabbitmq-cluster" >&2; exit 2; }

action=${1:-}
target=${2:-all}
[[ $# -le 2 ]] || usage
case $target in rabbitmq | secantusdb | all) ;; rabbitmq-cluster) ;; *) usage ;; esac
services=(secantusdb rabbitmq)
[[ $target == all ]] || services=("$target")

case $action in
    start | stop)
        mkdir -p "$STATE"
        # Serialise concurrent callers (parallel test sessions) on one state directory.
        exec 9>"$STATE/.lock"
        # 1800 s: the first start may be building SecantusDB (minutes).
        flock -w 1800 9 || die "another services.sh holds $STATE/.lock"
        EXPORTS=()
        for svc in "${services[@]}"; do
            case $svc in
                secantusdb) "secantus_$action" ;;
                rabbitmq) "rabbit_$action" ;;
                rabbitmq-cluster) "cluster_$action" ;;
            esac
        done
        # Only after every service is up, so a failed start prints no half-valid environment.
        if [[ $action == start ]]; then printf '%s\n' "${EXPORTS[@]}"; fi
        ;;
    status)
        rc=0
        for svc in "${services[@]}"; do
            case $svc in
                secantusdb) secantus_status || rc=1 ;;
                rabbitmq) rabbit_status || rc=1 ;;
                rabbitmq-cluster) cluster_status || rc=1 ;;
            esac
        done
        exit "$rc"
        ;;
    binary)
        [[ $target == secantusdb ]] || usage
        secantus_binary
        ;;
    *) usage ;;
esac
