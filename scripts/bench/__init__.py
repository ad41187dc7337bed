"""Orchestration benchmarks: what the stack adds around the models, measured in one run against a local stack
that the benchmark starts itself (its own temp DATA_DIR and free ports; with DATABASE_URL / REDIS_URL a throwaway
Postgres database and a locked Redis db, else the embedded SQLite and Redis).

    flock /tmp/backendai-integration.lock python -m scripts.bench                # every phase, writes the page
    flock /tmp/backendai-integration.lock python -m scripts.bench --only target  # the target method alone, printed

Phases: `target`, the project's target method (creates/s, drain, latency against its targets, scripts/bench/
target.py); `overhead`, end to end at 1 and 8 clients against the bare Serve handle call of the same near-zero
job; `services`, each service at 512x512 through the API against its plain model class; `creates`, create
throughput through the stack's API and through a second one with another number of uvicorn workers (consumer
paused), then the consumer draining what they queued; `profiles`, py-spy on the API, the consumer and the replica
during a drain. CPU per task and peak RSS by process role throughout.
"""
