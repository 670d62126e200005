#!/usr/bin/env bash
# RabbitMQ (with its management console) and Redis on 127.0.0.1, installed from Debian's
# packages when missing. `start` leaves servers that already run alone; `stop` stops only
# what `start` started.    usage: scripts/services.sh start|stop|status
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=$ROOT/var/run
mkdir -p "$RUN" "$ROOT/var/log" "$ROOT/var/redis"

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "services: need root (or sudo) to run: $*" >&2; exit 1
    fi
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
rabbit_up() { as_root rabbitmqctl -q await_startup --timeout 1 >/dev/null 2>&1; }
console_up() { curl -fsS -o /dev/null -u guest:guest http://127.0.0.1:15672/api/overview 2>/dev/null; }

install_missing() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
    command -v curl >/dev/null || missing+=(curl)
    if (( ${#missing[@]} )); then
        echo "services: installing ${missing[*]} from Debian's packages"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + limit ))
    until "$@"; do
        if (( $(date +%s) > deadline )); then
            echo "services: $what not ready after ${limit} s" >&2
            return 1
        fi
        sleep 0.5
    done
}

start() {
    install_missing
    if redis_up; then
        echo "services: Redis already running"
    else
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir "$ROOT/var/redis" \
            --pidfile "$RUN/redis.pid" --logfile "$ROOT/var/log/redis.log" --appendonly yes
        wait_for 30 Redis redis_up
        touch "$RUN/redis.started"
        echo "services: Redis started on 127.0.0.1:6379"
    fi
    if rabbit_up; then
        echo "services: RabbitMQ already running"
    else
        as_root rabbitmq-plugins enable --offline rabbitmq_management >/dev/null
        as_root rabbitmq-server -detached >/dev/null 2>&1
        # `rabbitmq-diagnostics ping` answers before port 5672 opens; await_startup does not.
        wait_for 90 RabbitMQ rabbit_up
        touch "$RUN/rabbitmq.started"
        echo "services: RabbitMQ started on 127.0.0.1:5672"
    fi
    if ! console_up; then
        as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
        wait_for 60 "the RabbitMQ management console" console_up
    fi
    echo "services: RabbitMQ management console on http://127.0.0.1:15672 (guest/guest)"
}

stop() {
    if [[ -f $RUN/redis.started ]]; then
        redis-cli -h 127.0.0.1 -p 6379 shutdown >/dev/null 2>&1 || true
        rm -f "$RUN/redis.started"
        echo "services: Redis stopped"
    fi
    if [[ -f $RUN/rabbitmq.started ]]; then
        as_root rabbitmqctl -q stop >/dev/null 2>&1 || true
        rm -f "$RUN/rabbitmq.started"
        echo "services: RabbitMQ stopped"
    fi
}

status() {
    redis_up && echo "Redis: running" || echo "Redis: stopped"
    rabbit_up && echo "RabbitMQ: running" || echo "RabbitMQ: stopped"
    console_up && echo "RabbitMQ console: http://127.0.0.1:15672" || echo "RabbitMQ console: down"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
