#!/bin/sh
# Redis' entrypoint in docker-compose.yml: one ACL user, cvjobs, whose password is the
# generated one, and no default user; then redis-server with the options it was given.
#
# The ACL file holds the password's SHA-256 only and lives on a tmpfs: it is rebuilt from
# the password file at every start, so replacing that file (and restarting) changes the
# password. cvjobs may run every command but the @admin ones (CONFIG, DEBUG, SHUTDOWN, ACL
# changes, replication, ...), which neither the API nor the workers use.
set -eu
secrets=${CV_SECRETS_DIR:-/run/cv-secrets}
acl=${CV_REDIS_ACL_FILE:-/tmp/redis/users.acl}
umask 0077

# `read` trims surrounding blanks as the services do (common/secrets.py strips the file).
password=
IFS=' 	' read -r password <"$secrets/redis.password" || true
if [ -z "$password" ]; then
    echo "redis-start: $secrets/redis.password is empty" >&2
    exit 1
fi
digest=$(printf '%s' "$password" | sha256sum | cut -d ' ' -f 1)

mkdir -p "$(dirname "$acl")"
printf 'user default off\nuser cvjobs on #%s ~* &* +@all -@admin\n' "$digest" >"$acl"
exec redis-server --aclfile "$acl" "$@"
