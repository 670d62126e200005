# Flower, Celery's monitoring UI (docker-compose.yml's `flower`): Celery and Flower only,
# at the versions of requirements-worker.txt and requirements-dev.txt, and the settings
# code that builds the broker URL with its password (docker/flower-start.sh).
FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements-worker.txt requirements-dev.txt ./
RUN pip install --no-cache-dir $(grep -hE '^(celery|kombu|python-dotenv)==' requirements-worker.txt) \
        $(grep -hE '^flower==' requirements-dev.txt)
COPY common common
COPY docker/flower-start.sh /usr/local/bin/cv-flower-start.sh
RUN useradd --uid 10001 --user-group --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin cv
USER 10001:10001
EXPOSE 5555
# /healthcheck answers without credentials (the UI and its API ask for them).
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["python", "-c", \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5555/healthcheck', timeout=4)"]
CMD ["sh", "/usr/local/bin/cv-flower-start.sh", "--address=0.0.0.0", "--port=5555"]
