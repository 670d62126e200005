#!/usr/bin/env bash
# Creates .venv-fuzz and installs Schemathesis into it (requirements-fuzz.txt, every package
# pinned), apart from the service's .venv: its dependencies must not change the service's.
# tests/e2e/test_schemathesis.py runs this first, so `make test` installs it when needed.
# Idempotent: skipped when requirements-fuzz.txt has not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-fuzz
STAMP=$VENV/.installed
want=$(sha256sum requirements-fuzz.txt | cut -d' ' -f1)

if [[ -f $STAMP && $(cat "$STAMP") == "$want" && -x $VENV/bin/schemathesis ]]; then
    echo "install_fuzz: $VENV is up to date"
    exit 0
fi

started=$(date +%s)
if [[ ! -x $VENV/bin/python ]]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        echo "install_fuzz: $PYTHON -m venv failed; on Debian: apt-get install -y python3-venv" >&2
        exit 1
    fi
fi

# The build machines' pip configuration names missing local indexes; drop only those lines.
quiet() { grep -v '^WARNING: Location' || true; }

echo "install_fuzz: Schemathesis into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | quiet
"$VENV/bin/python" -m pip install -q -r requirements-fuzz.txt 2>&1 | quiet
if ! version=$("$VENV/bin/schemathesis" --version 2>&1); then
    echo "$version" >&2
    echo "install_fuzz: schemathesis installed but does not run" >&2
    exit 1
fi
echo "$want" > "$STAMP"
echo "install_fuzz: $version in $(( $(date +%s) - started )) s"
