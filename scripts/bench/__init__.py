"""Orchestration benchmarks: what the stack adds around the models, measured in one run against a local stack
that the benchmark starts itself (its own temp DATA_DIR and free ports).

    flock /tmp/backendai-integration.lock python -m scripts.bench          # all phases, writes docs/benchmarks.md

Phases: orchestration overhead at 1 and 8 clients (end-to-end through the API against the bare Serve handle call
of the same near-zero-cost deployment), create throughput under the Serve ingress and plain uvicorn, a drain of N
queued tasks, each service at 512x512 through the API against its plain model class, CPU per task and peak RSS
per process role, and py-spy profiles of the Serve proxy, the API replica and a Celery worker.
"""
