#!/usr/bin/env bash
# RabbitMQ (with its management console) and Redis on 127.0.0.1 only, installed from
# Debian's packages when missing, each with a password generated on first start
# (var/secrets, mode 0600; the service reads them through CV_*_PASSWORD_FILE in .env).
# `start` leaves servers that already run alone; `stop` stops only what `start` started
# (markers in var/run hold the pid of the server it started).
#    usage: scripts/services.sh start|stop|status      (works from any directory)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=$ROOT/var/run
LOG=$ROOT/var/log
SECRETS=$ROOT/var/secrets
mkdir -p "$RUN" "$LOG" "$ROOT/var/redis"
# The service's user on both servers (the URLs in .env name it).
SERVICE_USER=cvjobs
# Every port of the node on loopback: AMQP and the console (conf.d below), the Erlang
# distribution port (25672) and epmd (4369). The node is named after localhost, so that
# rabbitmqctl finds it through a loopback epmd whatever the host name resolves to.
export RABBITMQ_NODENAME=rabbit@localhost
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
RABBIT_CONF=/etc/rabbitmq/conf.d/10-cvjobs-loopback.conf

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then
        sudo --preserve-env=RABBITMQ_NODENAME,ERL_EPMD_ADDRESS,RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS "$@"
    else echo "services: need root (or sudo) to run: $*" >&2; exit 1
    fi
}

secret() { cat "$SECRETS/$1.password"; }
# A password file is made once; a server started later takes the same one.
make_secret() {  # make_secret NAME
    local file=$SECRETS/$1.password
    [[ -s $file ]] && return
    (umask 077 && mkdir -p "$SECRETS" && head -c 32 /dev/urandom | base64 | tr -d '/+=\n' \
        > "$file")
    echo "services: generated the $1 password in var/secrets/$1.password"
}
rcli() { redis-cli -h 127.0.0.1 -p 6379 --user "$SERVICE_USER" --pass "$(secret redis)" \
    --no-auth-warning "$@"; }
redis_up() { rcli ping 2>/dev/null | grep -q PONG; }
# Anything answers on the port (with our password or not).
redis_port() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q .; }
redis_down() { ! redis_port; }
redis_pid() { rcli info server 2>/dev/null | sed -n 's/^process_id:\([0-9]*\).*/\1/p'; }
# `rabbitmq-diagnostics ping` answers before port 5672 opens; await_startup does not.
rabbit_up() { as_root rabbitmqctl -q await_startup --timeout 1 >/dev/null 2>&1; }
# The node answers at all (it may still be booting).
rabbit_node() { as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
rabbit_pid() { as_root rabbitmqctl -q eval 'os:getpid().' 2>/dev/null | tr -dc '0-9'; }
console_up() { curl -fsS -o /dev/null -u "$SERVICE_USER:$(secret broker)" \
    http://127.0.0.1:15672/api/overview 2>/dev/null; }

install_missing() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
    command -v curl >/dev/null || missing+=(curl)
    # `docker-compose config` checks the compose files in the tests (no engine needed).
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    # Prometheus and promtool: the metrics integration test scrapes with a real one, and CI
    # checks deploy/prometheus/ with promtool.
    command -v prometheus >/dev/null || missing+=(prometheus)
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
    if redis_port; then
        echo "services: a Redis on 127.0.0.1:6379 refuses the $SERVICE_USER user and its" \
            "password (var/secrets/redis.password); stop it, or add that user to it" >&2
        exit 1
    fi
    rm -f "$RUN/redis.started"
    # The ACL file keeps only the password's sha256; `default` (no password) is off.
    (umask 077 && printf 'user default off\nuser %s on #%s ~* &* +@all\n' "$SERVICE_USER" \
        "$(printf '%s' "$(secret redis)" | sha256sum | cut -d' ' -f1)" \
        > "$ROOT/var/redis/users.acl")
    # noeviction: the job store must never lose a key silently; set a maxmemory of your own.
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir "$ROOT/var/redis" \
        --pidfile "$RUN/redis.pid" --logfile "$LOG/redis.log" --appendonly yes \
        --aclfile "$ROOT/var/redis/users.acl" --maxmemory-policy noeviction
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
        loopback_config
        # An epmd left by an earlier node listens on every interface: start a loopback one.
        as_root epmd -kill >/dev/null 2>&1 || true
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

loopback_config() {
    as_root mkdir -p "$(dirname "$RABBIT_CONF")"
    printf '%s\n' "# Written by cvjobs scripts/services.sh: every listener on loopback." \
        "listeners.tcp.default = 127.0.0.1:5672" "management.tcp.ip = 127.0.0.1" \
        "management.tcp.port = 15672" | as_root tee "$RABBIT_CONF" >/dev/null
}

# The service user, with the generated password (set again on every start, so the file
# is always what counts); guest, whose password everyone knows, is removed.
broker_user() {
    local pw
    pw=$(secret broker)
    if ! as_root rabbitmqctl -q list_users 2>/dev/null | grep -q "^$SERVICE_USER\b"; then
        as_root rabbitmqctl -q add_user "$SERVICE_USER" "$pw" >/dev/null
    else
        as_root rabbitmqctl -q change_password "$SERVICE_USER" "$pw" >/dev/null
    fi
    # administrator: the tests create their own vhosts through the console's HTTP API.
    as_root rabbitmqctl -q set_user_tags "$SERVICE_USER" administrator >/dev/null
    as_root rabbitmqctl -q set_permissions -p / "$SERVICE_USER" ".*" ".*" ".*" >/dev/null
    as_root rabbitmqctl -q delete_user guest >/dev/null 2>&1 || true
}

start() {
    local started=$SECONDS
    install_missing
    make_secret redis
    make_secret broker
    start_redis
    start_rabbitmq
    broker_user
    if ! console_up; then
        # A node that was started without the plugin: enable it online.
        as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
        wait_for 60 "the RabbitMQ management console (port 15672)" console_up
    fi
    echo "services: RabbitMQ management console on http://127.0.0.1:15672" \
        "($SERVICE_USER, password in var/secrets/broker.password)"
    echo "services: ready in $(( SECONDS - started )) s"
}

stop() {
    if [[ -f $RUN/redis.started ]]; then
        if redis_up && ours redis "$(redis_pid)"; then
            # Not `shutdown nosave`: with appendonly the AOF is what survives.
            rcli shutdown >/dev/null 2>&1 || true
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
        echo "RabbitMQ console: http://127.0.0.1:15672 ($SERVICE_USER, var/secrets/broker.password)"
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
