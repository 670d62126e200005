#!/bin/sh
# Flower's entrypoint in docker-compose.yml: the broker URL with its password (built by
# common/settings.py from CV_BROKER_URL and CV_BROKER_PASSWORD_FILE, as the workers build
# it) and the console's credentials, user cvjobs and the generated flower password, both
# through the environment (CELERY_BROKER_URL, FLOWER_BASIC_AUTH), so no password is on a
# command line; then `celery flower` with the options it was given. Flower's Broker page
# asks RabbitMQ's management API on the broker's host, port 15672, with the same user.
set -eu
secrets=${CV_SECRETS_DIR:-/run/cv-secrets}

password=
IFS=' 	' read -r password <"$secrets/flower.password" || true
if [ -z "$password" ]; then
    echo "flower-start: $secrets/flower.password is empty" >&2
    exit 1
fi
CELERY_BROKER_URL=$(python -m common.settings broker_url)
FLOWER_BASIC_AUTH="cvjobs:$password"
export CELERY_BROKER_URL FLOWER_BASIC_AUTH
exec celery flower "$@"
