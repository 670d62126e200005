# Celery workers (all three queues use this image; the command picks the queue).
# torch 2.14.1 from PyPI is a CUDA build that also runs on the CPU, so one image serves both.
FROM python:3.11-slim
# The workers set Ultralytics' offline switches themselves (celery_worker/models.py).
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
CMD ["celery", "-A", "celery_worker.app", "worker", "-Q", "preprocess,postprocess", "-c", "2", \
     "--without-mingle", "--without-gossip", "--loglevel", "INFO"]
