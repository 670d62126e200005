"""Service passwords: read from files, and refused when they are known defaults.

`make start` (scripts/services.sh) and docker compose (its ``secrets`` service) generate
the broker's and Redis' passwords on first start and write them to files; the URLs in the
configuration carry the user name only and ``CV_BROKER_PASSWORD_FILE`` /
``CV_REDIS_PASSWORD_FILE`` name the files. Outside ``CV_ENV=development`` the API and the
workers refuse to start with a password anyone can guess, or with a Redis that asks none.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

# Passwords shipped in examples, images and older versions of this service.
KNOWN_DEFAULTS = frozenset(
    {"", "guest", "cvjobs", "password", "changeme", "admin", "redis", "rabbitmq", "secret"}
)


class WeakSecret(ValueError):
    """A service password is missing or a known default outside development."""


def with_password(url: str, password_file: Path | None) -> str:
    """``url`` with the password read from ``password_file`` when the URL has none."""
    if password_file is None:
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    try:
        password = password_file.read_text().strip()
    except OSError as exc:
        raise WeakSecret(f"cannot read the password file {password_file}: {exc.strerror}") from exc
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def weak_passwords(broker_url: str, redis_url: str) -> list[str]:
    """What is wrong with the two URLs' credentials (empty when nothing is)."""
    problems = []
    broker = urlsplit(broker_url)
    if broker.scheme.startswith(("amqp", "pyamqp")) and (
        unquote(broker.password or "") in KNOWN_DEFAULTS
    ):
        problems.append("the broker URL has no password or a known default one")
    store = urlsplit(redis_url)
    if store.scheme in ("redis", "rediss") and unquote(store.password or "") in KNOWN_DEFAULTS:
        problems.append("the Redis URL has no password or a known default one")
    return problems


def require_strong(env: str, broker_url: str, redis_url: str) -> None:
    """Raise :class:`WeakSecret` unless ``env`` is development or both passwords are strong."""
    if env == "development":
        return
    problems = weak_passwords(broker_url, redis_url)
    if problems:
        raise WeakSecret(
            "; ".join(problems)
            + ". Set CV_BROKER_PASSWORD_FILE / CV_REDIS_PASSWORD_FILE (make start and docker "
            "compose generate them), or CV_ENV=development on a machine only you can reach."
        )
