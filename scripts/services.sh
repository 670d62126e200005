#!/usr/bin/env bash
# RabbitMQ (with its management console) and Redis on 127.0.0.1, installed from Debian's
# packages when missing. `start` leaves servers that already run alone; `stop` stops only
# what `start` started (markers in var/run hold the pid of the server it started).
#    usage: scripts/services.sh start|stop|status      (works from any directory)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=$ROOT/var/run
LOG=$ROOT/var/log
mkdir -p "$RUN" "$LOG" "$ROOT/var/redis"

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "services: need root (or sudo) to run: $*" >&2; exit 1
    fi
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
redis_down() { ! redis_up; }
redis_pid() { redis-cli -h 127.0.0.1 -p 6379 info server 2>/dev/null \
    | sed -n 's/^process_id:\([0-9]*\).*/\1/p'; }
# `rabbitmq-diagnostics ping` answers before port 5672 opens; await_startup does not.
rabbit_up() { as_root rabbitmqctl -q await_startup --timeout 1 >/dev/null 2>&1; }
# The node answers at all (it may still be booting).
rabbit_node() { as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
rabbit_pid() { as_root rabbitmqctl -q eval 'os:getpid().' 2>/dev/null | tr -dc '0-9'; }
console_up() { curl -fsS -o /dev/null -u guest:guest http://127.0.0.1:15672/api/overview \
    2>/dev/null; }

install_missing() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
    command -v curl >/dev/null || missing+=(curl)
    if (( ${#missing[@]} )); then
        echo "services: installing ${missing[*]} from Debian's packages"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
            >/dev/null
    fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + limit ))
    until "$@"; do
        if (( $(date +%s) >= deadline )); then
            echo "services: $what not ready after ${limit} s" >&2
            return 1
        fi
        sleep 0.5
    done
}

# The marker names the pid this script started; a server running under another pid
# (restarted by someone else since) is not ours to stop. An empty marker (older versions of
# this script) counts as ours.
ours() {  # ours NAME CURRENT_PID
    local marker=$RUN/$1.started
    [[ -f $marker ]] || return 1
    [[ ! -s $marker || $(cat "$marker") == "$2" ]]
}

start_redis() {
    if redis_up; then
        echo "services: Redis already running"
        return
    fi
    rm -f "$RUN/redis.started"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir "$ROOT/var/redis" \
        --pidfile "$RUN/redis.pid" --logfile "$LOG/redis.log" --appendonly yes
    if ! wait_for 30 Redis redis_up; then
        tail -n 20 "$LOG/redis.log" >&2 || true
        exit 1
    fi
    redis_pid > "$RUN/redis.started"
    echo "services: Redis started on 127.0.0.1:6379 (data in var/redis, log var/log/redis.log)"
}

start_rabbitmq() {
    if rabbit_up; then
        echo "services: RabbitMQ already running"
        return
    fi
    rm -f "$RUN/rabbitmq.started"
    local ours_now=0
    if rabbit_node; then
        echo "services: RabbitMQ is booting (started elsewhere); waiting for it"
    else
        as_root rabbitmq-plugins enable --offline rabbitmq_management >/dev/null
        as_root rabbitmq-server -detached >"$LOG/rabbitmq-start.log" 2>&1 || true
        ours_now=1
    fi
    if ! wait_for 90 RabbitMQ rabbit_up; then
        echo "services: see $LOG/rabbitmq-start.log and /var/log/rabbitmq/" >&2
        tail -n 20 "$LOG/rabbitmq-start.log" >&2 || true
        exit 1
    fi
    if (( ours_now )); then
        rabbit_pid > "$RUN/rabbitmq.started"
        echo "services: RabbitMQ started on 127.0.0.1:5672"
    fi
}

start() {
    local started=$SECONDS
    install_missing
    start_redis
    start_rabbitmq
    if ! console_up; then
        # A node that was started without the plugin: enable it online.
        as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
        wait_for 60 "the RabbitMQ management console (port 15672)" console_up
    fi
    echo "services: RabbitMQ management console on http://127.0.0.1:15672 (guest/guest)"
    echo "services: ready in $(( SECONDS - started )) s"
}

stop() {
    if [[ -f $RUN/redis.started ]]; then
        if redis_up && ours redis "$(redis_pid)"; then
            # Not `shutdown nosave`: with appendonly the AOF is what survives.
            redis-cli -h 127.0.0.1 -p 6379 shutdown >/dev/null 2>&1 || true
            wait_for 30 "Redis shutdown" redis_down || true
            echo "services: Redis stopped"
        fi
        rm -f "$RUN/redis.started"
    fi
    if [[ -f $RUN/rabbitmq.started ]]; then
        if rabbit_node && ours rabbitmq "$(rabbit_pid)"; then
            # `shutdown` returns once the Erlang VM has exited (`stop` does not wait without
            # a pid file), so a `start` right after cannot meet a half-stopped node.
            as_root rabbitmqctl -q shutdown >/dev/null 2>&1 || true
            echo "services: RabbitMQ stopped"
        fi
        rm -f "$RUN/rabbitmq.started"
    fi
}

status() {
    local who
    if redis_up; then
        who="not started by this script"
        ours redis "$(redis_pid)" && who="started by this script"
        echo "Redis: running on 127.0.0.1:6379 (pid $(redis_pid), $who)"
    else
        echo "Redis: stopped"
    fi
    if rabbit_up; then
        who="not started by this script"
        ours rabbitmq "$(rabbit_pid)" && who="started by this script"
        echo "RabbitMQ: running on 127.0.0.1:5672 (pid $(rabbit_pid), $who)"
    else
        echo "RabbitMQ: stopped"
    fi
    if console_up; then
        echo "RabbitMQ console: http://127.0.0.1:15672 (guest/guest)"
    else
        echo "RabbitMQ console: down"
    fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
