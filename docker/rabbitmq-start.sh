#!/bin/sh
# RabbitMQ's entrypoint in docker-compose.yml: the configuration, written to a tmpfs from
# the generated password, then the command it was given (rabbitmq-server).
#
# The node reads only this configuration directory (RABBITMQ_CONFIG_FILES), not the
# image's conf.d, whose 10-defaults.conf lets guest log in from anywhere. The definitions
# file is imported at every boot: it creates the user cvjobs on a new node and sets the
# password of an existing one to the file's, so replacing the password file (and
# restarting) changes the password, and a volume from an older setup takes the new one.
# No guest user is made (a node with definitions to load seeds no default user); should one
# exist, it may log in from inside this container only.
set -eu
secrets=${CV_SECRETS_DIR:-/run/cv-secrets}
conf=${CV_RABBITMQ_CONF_DIR:-/tmp/rabbitmq}
umask 0077

password=
IFS=' 	' read -r password <"$secrets/broker.password" || true
if [ -z "$password" ]; then
    echo "rabbitmq-start: $secrets/broker.password is empty" >&2
    exit 1
fi
json_password=$(printf '%s' "$password" | sed 's/\\/\\\\/g; s/"/\\"/g')

mkdir -p "$conf/conf.d"
cat >"$conf/definitions.json" <<JSON
{
  "vhosts": [{"name": "/"}],
  "users": [{"name": "cvjobs", "password": "$json_password", "tags": ["administrator"]}],
  "permissions": [
    {"user": "cvjobs", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
  ]
}
JSON
cat >"$conf/conf.d/10-cvjobs.conf" <<CONF
loopback_users.guest = true
load_definitions = $conf/definitions.json
log.console = true
log.file = false
CONF

export RABBITMQ_CONFIG_FILES="$conf/conf.d"
exec "$@"
