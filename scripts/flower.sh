#!/usr/bin/env bash
# Flower, Celery's monitoring UI, for the stack of `make start`: http://127.0.0.1:5555
# (loopback only), in the foreground (Ctrl-C stops it). Basic auth: user cvjobs and a
# password generated on first run into var/secrets/flower.password (mode 0600). The
# password reaches Flower through its environment (FLOWER_BASIC_AUTH), not its command
# line; the broker's comes from the settings (common/settings.py), as the workers read it.
# Flower's Broker page (queue depths) asks RabbitMQ's management API on the broker's host,
# port 15672, with the broker's user and password.
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
export FLOWER_BASIC_AUTH
echo "flower: http://127.0.0.1:5555 (user cvjobs, password in var/secrets/flower.password)"
exec "$BIN/celery" --workdir "$ROOT" -A celery_worker.app flower --address=127.0.0.1 \
    --port=5555 "$@"
