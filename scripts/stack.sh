#!/usr/bin/env bash
# The application processes: the API (gunicorn + uvicorn workers) and one Celery worker per
# queue, in the background with pidfiles in var/run and logs in var/log.
#    usage: scripts/stack.sh start|stop|status|reload
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=$ROOT/var/run
LOG=$ROOT/var/log
BIN=$ROOT/.venv/bin
QUEUES=(preprocess inference postprocess notify)
mkdir -p "$RUN" "$LOG"

# Every setting is read by common/settings.py (.env under the environment); the processes
# read their own, this script asks it for the two it needs.
BIND=127.0.0.1:8000 INFERENCE_PROCESSES=1  # `make stop` may run before any install
if [[ -x $BIN/python ]]; then
    { read -r BIND; read -r INFERENCE_PROCESSES; } < <("$BIN/python" -m common.settings \
        api_bind inference_processes)
fi
URL="http://${BIND/0.0.0.0/127.0.0.1}"

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
# The processes that died (a gunicorn master whose app failed to import removes its pidfile).
exited() {
    alive "$RUN/api.pid" || printf ' API'
    local queue
    for queue in "${QUEUES[@]}"; do
        alive "$RUN/worker-$queue.pid" || printf ' %s-worker' "$queue"
    done
}

start() {
    scripts/services.sh start
    local started
    started=$(date +%s%N)
    if alive "$RUN/api.pid"; then
        echo "stack: API already running"
    else
        "$BIN/gunicorn" --no-control-socket -k api.server.ApiWorker -w 2 -b "$BIND" \
            --chdir "$ROOT" --pid "$RUN/api.pid" --daemon \
            --access-logfile "$LOG/api-access.log" --error-logfile "$LOG/api.log" \
            "api.app:create_app()"
    fi
    for queue in "${QUEUES[@]}"; do
        if alive "$RUN/worker-$queue.pid"; then
            echo "stack: $queue worker already running"
            continue
        fi
        # Callbacks wait on the network: threads. Steps: one prefork process each.
        pool=(-P prefork -c 1)
        [[ $queue == notify ]] && pool=(-P threads -c 8)
        # More inference processes on a CPU host: set CV_TORCH_THREADS to cores / processes.
        [[ $queue == inference ]] && pool=(-P prefork -c "$INFERENCE_PROCESSES")
        "$BIN/celery" --workdir "$ROOT" -A celery_worker.app worker -Q "$queue" \
            -n "$queue@%h" "${pool[@]}" --without-mingle --without-gossip --loglevel INFO \
            --pidfile "$RUN/worker-$queue.pid" --logfile "$LOG/worker-$queue.log" --detach
    done
    # Ready when RabbitMQ and Redis answer the API and the inference worker reported its models.
    printf "stack: waiting for %s/health/ready and the inference worker " "$URL"
    local t0=$SECONDS waited dead
    until curl -fsS --max-time 5 "$URL/health/ready" 2>/dev/null | grep -q '"models"'; do
        waited=$(( SECONDS - t0 ))
        dead=$(exited)
        if (( waited >= 120 )) || [[ $waited -ge 10 && -n $dead ]]; then
            echo
            if [[ -n $dead ]]; then
                echo "stack: exited:$dead; last log lines:" >&2
            else
                echo "stack: not ready after 120 s; last log lines:" >&2
            fi
            tail -n 20 "$LOG"/api.log "$LOG"/worker-*.log >&2 || true
            exit 1
        fi
        printf "."
        sleep 1
    done
    echo
    local ms=$(( ($(date +%s%N) - started) / 1000000 ))
    printf "stack: ready in %d.%03d s (API %s, workers: %s)\n" \
        $(( ms / 1000 )) $(( ms % 1000 )) "$URL" "${QUEUES[*]}"
}

stop_pid() {  # stop_pid PIDFILE NAME
    local file=$1 name=$2 pid
    alive "$file" || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
    echo "stack: $name stopped"
}

stop() {
    stop_pid "$RUN/api.pid" API
    for queue in "${QUEUES[@]}"; do
        stop_pid "$RUN/worker-$queue.pid" "$queue worker"
    done
    scripts/services.sh stop
}

status() {
    alive "$RUN/api.pid" && echo "API: running ($URL)" || echo "API: stopped"
    for queue in "${QUEUES[@]}"; do
        alive "$RUN/worker-$queue.pid" && echo "$queue worker: running" \
            || echo "$queue worker: stopped"
    done
    scripts/services.sh status
}

reload() {
    # The API re-reads config/ in new gunicorn workers (HUP: graceful, no request dropped).
    if alive "$RUN/api.pid"; then
        kill -HUP "$(cat "$RUN/api.pid")"
        echo "stack: API reloading"
    fi
    # Warm shutdown: each worker finishes its current step; queued messages wait in RabbitMQ.
    for queue in "${QUEUES[@]}"; do
        stop_pid "$RUN/worker-$queue.pid" "$queue worker"
    done
    start
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    reload) reload ;;
    *) echo "usage: $0 start|stop|status|reload" >&2; exit 2 ;;
esac
