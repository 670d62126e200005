# The API: light on purpose (no torch, ultralytics or OpenCV).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*
COPY requirements-api.txt .
RUN pip install --no-cache-dir -r requirements-api.txt
COPY api api
COPY common common
COPY swagger swagger
COPY config config
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD curl -fsS http://127.0.0.1:8000/health/ready || exit 1
CMD ["gunicorn", "--no-control-socket", "-k", "uvicorn_worker.UvicornWorker", "-w", "2", \
     "-b", "0.0.0.0:8000", "--access-logfile", "-", "api.app:create_app()"]
