# Celery workers (all three queues use this image; the command picks the queue).
# torch 2.14.1 from PyPI is a CUDA build that also runs on the CPU, so one image serves both.
FROM python:3.11.13-slim-bookworm
# The workers set Ultralytics' offline switches themselves (celery_worker/models.py); its
# settings directory is on /tmp, writable under compose's read-only root.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CV_ULTRALYTICS_DIR=/tmp/ultralytics
WORKDIR /app
# libGL and glib for opencv-python (the non-headless wheel ultralytics depends on).
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
COPY requirements-worker.txt requirements-worker-nodeps.txt ./
RUN pip install --no-cache-dir -r requirements-worker.txt \
    && pip install --no-cache-dir --no-deps -r requirements-worker-nodeps.txt
COPY celery_worker celery_worker
COPY common common
COPY config config
# The API's unprivileged user (uid 10001: both write the shared storage volume), home /tmp
# (matplotlib's and torch's caches). /data/storage is made here, owned by it, so that a new
# named volume mounted there starts owned by it too.
RUN useradd --uid 10001 --user-group --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin cv \
    && install -d -o 10001 -g 10001 /data/storage
USER 10001:10001
# Healthy while the worker holds a connection to the broker (port 5672 = 0x1628 in
# /proc/net/tcp, state 01 = established): cheap, unlike `celery inspect ping`, which
# imports the app and round-trips through the broker. start-period: loading the models.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD ["python", "-c", \
    "import sys; from pathlib import Path; \
rows = [line.split() for name in ('/proc/net/tcp', '/proc/net/tcp6') if Path(name).exists() \
for line in Path(name).read_text().splitlines()[1:]]; \
sys.exit(not any(row[2].endswith(':1628') and row[3] == '01' for row in rows))"]
CMD ["celery", "-A", "celery_worker.app", "worker", "-Q", "preprocess,postprocess", "-c", "2", \
     "--without-mingle", "--without-gossip", "--loglevel", "INFO"]
