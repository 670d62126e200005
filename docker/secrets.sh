#!/bin/sh
# The one-shot `secrets` service (docker-compose.yml): a random password for the broker, one
# for Redis, one each for the Flower and Grafana consoles, and the token Prometheus scrapes
# the API's /metrics with (CV_METRICS_TOKEN_FILE), each written once. A file already there
# is kept, so restarts and upgrades never change a password; remove a file to have a new
# one made on the next start.
#
# Files are mode 0440, owned by this service's user and group 10002, which the services
# that read them join (group_add in docker-compose.yml).
set -eu
dir=${CV_SECRETS_DIR:-/run/cv-secrets}
umask 0227

names="broker.password redis.password flower.password grafana.password metrics.token"
for name in $names; do
    file=$dir/$name
    if [ -s "$file" ]; then
        echo "secrets: $file kept"
        continue
    fi
    # 32 characters of [A-Za-z0-9], about 190 bits: nothing a URL, rabbitmq.conf, JSON or
    # a Redis ACL rule would have to escape.
    password=$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32)
    if [ ${#password} -ne 32 ]; then
        echo "secrets: could not read 32 characters from /dev/urandom" >&2
        exit 1
    fi
    # Written beside the target and renamed: a reader never sees half a password.
    partial=$dir/.$name.partial
    rm -f "$partial"
    printf '%s\n' "$password" >"$partial"
    chmod 0440 "$partial"
    mv "$partial" "$file"
    echo "secrets: $file written"
done
