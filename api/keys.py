"""API keys and tenants from the command line (the first admin key comes from here).

    .venv/bin/python -m api.keys create --tenant acme --name ci --role member
    .venv/bin/python -m api.keys list [--tenant acme]
    .venv/bin/python -m api.keys revoke <key id>
    .venv/bin/python -m api.keys rotate-secret --tenant acme

``create`` prints the key once (and the tenant's signing secret when the tenant is
new); only its hash is kept. It talks to Redis directly (``CV_REDIS_URL``), so it
works before any admin key exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from api import admin
from api.errors import ApiError
from api.quotas import Quotas
from api.services import Services
from common.catalogue import load_catalogue
from common.celery_app import make_celery
from common.jobstore import JobStore
from common.settings import Settings
from common.storage import Storage


def services(settings: Settings) -> Services:
    """What the admin functions need, without starting an API."""
    store = JobStore.from_url(settings.redis_url, settings.redis_prefix, settings.job_ttl_seconds)
    return Services(
        settings=settings,
        catalogue=load_catalogue(settings),
        store=store,
        storage=Storage(settings.resolve(settings.storage_dir)),
        celery=make_celery(settings, name="cvjobs-keys"),
        quotas=Quotas(settings, store),
    )


def saved_key(path: Path, tenant: str, name: str, role: str, settings: Settings) -> str:
    """The key kept in ``path`` if it is still valid, else a new one (written there, mode
    600): how the demo and the benchmarks get theirs."""
    svc = services(settings)
    if path.is_file():
        secret = path.read_text().strip()
        key = svc.store.apikeys.find(secret)
        if key is not None and not key.revoked and (key.tenant, key.role) == (tenant, role):
            return secret
    made = admin.create_key(svc, tenant, name, role)
    _write_secret(path, made["secret"])
    return str(made["secret"])


def _write_secret(path: Path, secret: str) -> None:
    """``secret`` into ``path``, readable by its owner only (also when the file exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(secret + "\n")


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.keys", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key (and its tenant, if new)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=("reader", "member", "admin"))
    create.add_argument("--save", type=Path, help="also write the key to this file (mode 600)")
    listing = commands.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--tenant")
    revoke = commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    rotate = commands.add_parser("rotate-secret", help="a new signing secret for a tenant")
    rotate.add_argument("--tenant", required=True)
    args = parser.parse_args(argv)
    svc = services(settings or Settings.from_env())
    try:
        if args.command == "create":
            made = admin.create_key(svc, args.tenant, args.name, args.role)
            if args.save:
                _write_secret(args.save, made["secret"])
            _created(made)
        elif args.command == "list":
            _print(admin.keys(svc, args.tenant)["keys"])
        elif args.command == "revoke":
            print(json.dumps(admin.revoke_key(svc, args.key_id), indent=1))
        else:
            rotated = admin.rotate_signing_secret(svc, args.tenant)
            print(f"signing secret of {args.tenant} (shown once): {rotated['signing_secret']}")
    except ApiError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    return 0


def _created(made: dict[str, Any]) -> None:
    key = made["key"]
    print(f"key {key['id']} ({key['role']} of tenant {key['tenant']}, {key['name']!r})")
    print(f"API key (shown once, only its hash is kept): {made['secret']}")
    if made.get("tenant_signing_secret"):
        secret = made["tenant_signing_secret"]
        print(f"new tenant {key['tenant']}: callback signing secret (shown once): {secret}")


def _print(keys: list[dict[str, Any]]) -> None:
    print(f"{'id':16}  {'prefix':12}  {'tenant':16}  {'role':6}  {'name':20}  state")
    for key in keys:
        state = f"revoked {key['revoked_at']}" if key["revoked_at"] else "active"
        print(
            f"{key['id']:16}  {key['prefix']:12}  {key['tenant']:16}  {key['role']:6}  "
            f"{key['name'][:20]:20}  {state}"
        )


if __name__ == "__main__":
    sys.exit(main())
