# The API: light on purpose (no torch, ultralytics or OpenCV).
FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements-api.txt .
RUN pip install --no-cache-dir -r requirements-api.txt
COPY api api
COPY common common
COPY swagger swagger
COPY config config
# An unprivileged user (uid 10001, shared with the workers' image) whose home is /tmp, the
# one writable place under compose's read-only root. /data/storage is made here, owned by
# it, so that a new named volume mounted there starts owned by it too.
RUN useradd --uid 10001 --user-group --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin cv \
    && install -d -o 10001 -g 10001 /data/storage
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["python", "-c", \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)"]
# The worker class of scripts/stack.sh: uvicorn with a deadline on request heads.
CMD ["gunicorn", "--no-control-socket", "-k", "api.server.ApiWorker", "-w", "2", \
     "-b", "0.0.0.0:8000", "--access-logfile", "-", "api.app:create_app()"]
