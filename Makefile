# The two commands of the README: `make demo` (whole stack + sample job) and `make test`.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: help install services start demo stop status reload models models-sam export-onnx migrate test lint bench bench-video bench-tenants bench-slow-clients bench-events bench-ceiling bench-submissions bench-sam flower clean

help:
	@echo "make demo     install, start RabbitMQ, Redis, the API and 3 workers, run the sample job"
	@echo "make test     install, start RabbitMQ and Redis if needed, run the whole test suite"
	@echo "make start    install and start the stack without the demo"
	@echo "make stop     stop what make start / make demo started"
	@echo "make status   what is running"
	@echo "make flower   Flower (Celery's monitoring UI) on http://127.0.0.1:5555, user cvjobs"
	@echo "make reload   restart the workers (new weights, new config); queued jobs wait"
	@echo "make models   download the official YOLO weights, MobileSAM and SAM 2 tiny (needs the internet)"
	@echo "make models-sam  every SAM-family weights file of config/models.yaml (SAM h: 2.4 GB)"
	@echo "make export-onnx WEIGHTS=models/yolov8n.pt TASK=detect   export and register ONNX"
	@echo "make lint     ruff (lint + format check) and mypy"
	@echo "make bench    latency benchmark against the running stack"
	@echo "make bench-video   video fps through the running stack vs a plain loop (30 s of 720p)"
	@echo "make bench-tenants fairness behind another tenant's batch, POST with auth on and off"
	@echo "make bench-slow-clients  a normal POST while 200 clients trickle heads and bodies"
	@echo "make bench-events        1,000 SSE subscribers while jobs run: delivery, latency, POST times"
	@echo "make bench-ceiling       the orchestration ceiling: a null model through the real queues, batched vs not"
	@echo "make bench-submissions   POST /v1/jobs at 32 clients: rate and latency, idle and busy workers; batches"
	@echo "make bench-sam           interactive segmentation: first prompt vs later ones, service and direct"
	@echo "make migrate  upgrade a stopped installation in place: priority queues, tenants"
	@echo "make clean    remove var/ (jobs, logs, Redis data) and demo-output/"

install:
	@scripts/install.sh

services:
	@scripts/services.sh start

start: install
	@scripts/stack.sh start

demo: start
	@$(PY) scripts/demo.py

stop:
	@scripts/stack.sh stop

status:
	@scripts/stack.sh status

reload:
	@scripts/stack.sh reload

flower: install
	@scripts/flower.sh

models: install
	$(PY) scripts/fetch_models.py

models-sam: install
	$(PY) scripts/fetch_models.py --sam-all

export-onnx: install
	$(PY) -m celery_worker.export $(WEIGHTS) --register $(or $(TASK),detect)

# make itself exits 2 on any failing recipe; the line below names pytest's own status
# (5 = no test collected, which fails too).
test: install services
	@$(PY) -m pytest $(PYTEST_ARGS) || { rc=$$?; echo "make test: pytest exited with $$rc" >&2; exit $$rc; }

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench: install
	$(PY) benchmarks/run.py

bench-video: install
	$(PY) benchmarks/video.py

bench-tenants: install
	$(PY) benchmarks/tenants.py

bench-slow-clients: install
	$(PY) benchmarks/slow_clients.py

bench-events: install services
	$(PY) benchmarks/events.py

bench-ceiling: install services
	$(PY) benchmarks/ceiling.py

bench-submissions: install services
	$(PY) benchmarks/submissions.py

bench-sam: install services
	$(PY) benchmarks/sam.py

# With the API and workers stopped (RabbitMQ and Redis running): see common/migrate.py.
migrate: install
	$(PY) -m common.migrate queues
	$(PY) -m common.migrate tenants

clean:
	rm -rf var demo-output
