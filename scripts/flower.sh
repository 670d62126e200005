#!/usr/bin/env bash
# Flower, Celery's monitoring UI, for the stack of `make start`: http://127.0.0.1:5555
# (loopback only), in the foreground (Ctrl-C stops it). Basic auth: user cvjobs and a
# password generated on first run into var/secrets/flower.password (mode 0600). The
# password, and the broker's in the management API URL of the Broker page, reach Flower
# through its environment (FLOWER_BASIC_AUTH, FLOWER_BROKER_API), never its command line.
#    usage: scripts/flower.sh [FLOWER OPTIONS...]      (make flower; works from any directory)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=$ROOT/.venv/bin
SECRETS=$ROOT/var/secrets
FILE=$SECRETS/flower.password

# Made once, as scripts/services.sh makes the broker's and Redis' passwords.
if [[ ! -s $FILE ]]; then
    (umask 077 && mkdir -p "$SECRETS" && head -c 32 /dev/urandom | base64 | tr -d '/+=\n' \
        > "$FILE")
    echo "flower: generated the password in var/secrets/flower.password"
fi
FLOWER_BASIC_AUTH="cvjobs:$(cat "$FILE")"
# The broker URL with its password, as the workers build it (common/settings.py); the
# Broker page reads queue depths from RabbitMQ's management API: same user and host, 15672.
broker=$("$BIN/python" -m common.settings broker_url)
export FLOWER_BASIC_AUTH
if [[ $broker == amqp://* || $broker == amqps://* ]]; then
    FLOWER_BROKER_API=$(printf '%s' "$broker" | sed -E \
        's#^amqps?://([^@/]*@)?(\[[^]]*\]|[^:/]*)(:[0-9]+)?/.*#http://\1\2:15672/api/#')
    export FLOWER_BROKER_API
fi
echo "flower: http://127.0.0.1:5555 (user cvjobs, password in var/secrets/flower.password)"
exec "$BIN/celery" --workdir "$ROOT" -A celery_worker.app flower --address=127.0.0.1 \
    --port=5555 "$@"
