#!/usr/bin/env bash
# Installs (when missing) and starts a tansu Kafka-protocol broker for history-sink.
#
#   scripts/tansu.sh install                 # build tansu 0.6.0 into $TANSU_ROOT (~12 min, once)
#   scripts/tansu.sh start [PORT] [ENGINE]   # background broker; ENGINE memory (default) | sqlite
#   scripts/tansu.sh stop [PORT]
#   scripts/tansu.sh path                    # print the binary path (for HISTORY_TEST_TANSU)
#
# The history-sink tests start their own brokers; they only need the binary
# (HISTORY_TEST_TANSU, default: tansu on PATH, else ~/.cache/partialconv/tools/bin/tansu).
set -euo pipefail

TANSU_VERSION=0.6.0
TANSU_ROOT=${TANSU_ROOT:-$HOME/.cache/partialconv/tools}
TANSU_BIN=${HISTORY_TEST_TANSU:-$TANSU_ROOT/bin/tansu}
STATE_DIR=${TANSU_STATE_DIR:-$HOME/.cache/partialconv/tansu}

install() {
    if [[ -x $TANSU_BIN ]]; then
        return 0
    fi
    echo "installing tansu $TANSU_VERSION into $TANSU_ROOT (about 12 minutes)" >&2
    cargo install tansu --version "$TANSU_VERSION" --features dynostore,libsql --locked \
        --root "$TANSU_ROOT"
}

start() {
    local port=${1:-9092} engine=${2:-memory}
    install
    local dir=$STATE_DIR/$port
    mkdir -p "$dir"
    local storage
    case $engine in
        memory) storage=memory://tansu/ ;;
        sqlite) storage=sqlite://tansu.db ;; # relative to the broker's working directory
        *) echo "unknown engine $engine (memory|sqlite)" >&2; exit 2 ;;
    esac
    (cd "$dir" && nohup "$TANSU_BIN" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "$storage" >"$dir/tansu.log" 2>&1 &
        echo $! >"$dir/pid")
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "tansu listening on 127.0.0.1:$port ($storage, log $dir/tansu.log)"
            return 0
        fi
        sleep 0.1
    done
    echo "tansu did not start; see $dir/tansu.log" >&2
    exit 1
}

stop() {
    local port=${1:-9092} pidfile=$STATE_DIR/${1:-9092}/pid
    if [[ -f $pidfile ]]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
        echo "stopped tansu on $port"
    fi
}

case ${1:-} in
    install) install ;;
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    path) echo "$TANSU_BIN" ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
esac
