#!/usr/bin/env bash
# Creates .venv and installs the Python packages of the API, the workers and the tests, and
# this project itself (editable: api, common, celery_worker import from any directory).
# Idempotent: skipped when the requirements files and pyproject.toml have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed
REQS=(requirements-api.txt requirements-worker.txt requirements-dev.txt requirements-worker-nodeps.txt)
want=$(cat "${REQS[@]}" pyproject.toml | sha256sum | cut -d' ' -f1)

if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
    echo "install: .venv is up to date"
    exit 0
fi

started=$(date +%s)
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [[ ! -x $VENV/bin/python ]]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        echo "install: python3 -m venv failed; on Debian: apt-get install -y python3-venv" >&2
        exit 1
    fi
fi

# The build machines' pip configuration names missing local indexes; drop only those lines.
quiet() { grep -v '^WARNING: Location' || true; }

echo "install: Python packages into $VENV (a few minutes the first time: torch is large)"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | quiet
"$VENV/bin/python" -m pip install -q -r requirements-api.txt -r requirements-worker.txt \
    -r requirements-dev.txt 2>&1 | quiet
# facenet-pytorch's metadata pins an old torch; its MTCNN runs on ours (see the file).
"$VENV/bin/python" -m pip install -q --no-deps -r requirements-worker-nodeps.txt 2>&1 | quiet
# The project itself, editable: its packages import from any directory.
"$VENV/bin/python" -m pip install -q --no-deps -e . 2>&1 | quiet
mkdir -p var/ultralytics
# From another directory, so the project's own packages must come from the install.
python=$PWD/$VENV/bin/python
if ! out=$(cd / && YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$OLDPWD/var/ultralytics "$python" -c \
        'import celery, connexion, cv2, facenet_pytorch, torch, ultralytics, api, celery_worker' \
        2>&1); then
    echo "$out" >&2
    echo "install: the packages installed but do not import" >&2
    exit 1
fi
echo "$want" > "$STAMP"
echo "install: done in $(( $(date +%s) - started )) s"
