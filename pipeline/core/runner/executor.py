"""Executors: run pipeline steps (source, stage groups, pack) over shards.

``local`` runs each step over every shard in this process, one step after the other.
``processes`` pipelines the steps by shard over worker processes on this machine (``pool.py``). ``ray``
pipelines the steps by shard: shard s enters step i+1 as soon as step i finished it, so a GPU
group, the CPU group after it and the pack run at the same time on different shards. Each step
has its own actors (stages set up once per actor); the number of live CPU actors never exceeds
the cluster's CPUs, later steps get workers first (which drains the pipeline and bounds the
shards in flight). A worker that dies is replaced and its shard retried; the worker class's
``note_crash`` narrows the culprit down so a sample that crashes the process costs one row.
"""
from __future__ import annotations

import warnings
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.config import ConfigError, RunConfig
from pipeline.core.execute import ShardError


@dataclass
class Step:
    """One step of the pipeline: a worker class, its constructor args and its GPU share."""

    worker_cls: type
    args: tuple
    gpus: float
    tick: Callable[[Any], None]
    collect: Callable[[Any], None] | None = None

    def done(self, result: Any) -> None:
        self.tick(result)
        if self.collect:
            self.collect(result)

    def worker_died(self, shard: str, deaths: int, max_attempts: int, how: str) -> None:
        """A worker of this step died on ``shard`` (the ``deaths``-th time): give up past
        ``max_attempts``, else let the worker class narrow the culprit down and say so."""
        if deaths >= max_attempts:
            raise RuntimeError(f"shard {shard}: the worker died {deaths} times; giving up "
                               f"(last: {how}). Rerun to retry.") from None
        note = getattr(self.worker_cls, "note_crash", None)
        blamed = note(*self.args, shard) if note else []
        warnings.warn(f"a worker died on shard {shard} ({how}); retrying"
                      + (f", isolating {blamed}" if blamed else ""), stacklevel=3)


class Executor:
    """Context manager owning the Ray connection (when ``executor == 'ray'``)."""

    max_attempts = 8
    """Worker deaths tolerated per shard and step: a crashing sample needs two."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.ray = None
        self.workers = "this process" if cfg.executor == "local" else "Ray actors"
        """Where the work ran, in words (the summary prints it)."""

    def __enter__(self) -> "Executor":
        if self.cfg.executor == "ray":
            import ray

            if not ray.is_initialized():
                local = not self.cfg.ray_address
                ray.init(address=self.cfg.ray_address, num_cpus=self.cfg.num_cpus if local else None,
                         num_gpus=self.cfg.num_gpus if local else None,
                         include_dashboard=False, log_to_driver=True, logging_level="warning")
            self.ray = ray
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ray is not None and not self.cfg.ray_address:
            self.ray.shutdown()

    def run(self, steps: list[Step], shards: list[str], poll: Callable[[], None] | None = None,
            models_mb: float = 0.0) -> dict[str, str]:
        """Run every step over every shard; returns the shards that failed ({shard: why}): they
        skip later steps, the others finish. ``models_mb``: memory one worker's models take."""
        if self.cfg.executor == "processes":
            from pipeline.core import threads
            from pipeline.core.runner.pool import ProcessPipeline

            cores = min(threads.available_cores(), self.cfg.num_cpus or 10**6)
            workers, why = threads.workers_for(cores, len(shards), models_mb,
                                               None if self.cfg.num_cpus else threads.available_mb())
            if why:
                warnings.warn(why, stacklevel=2)
            procs = ProcessPipeline(steps, shards, workers, cores, self.max_attempts, poll)
            self.workers = procs.layout()
            procs.run()
            return procs.failed
        if self.ray is None:
            failed: dict[str, str] = {}
            for step in steps:
                worker = step.worker_cls(*step.args)
                for shard in shards:
                    if shard in failed:
                        continue
                    try:
                        step.done(worker.run_shard(shard))
                    except ShardError as exc:
                        failed[shard] = str(exc)
                        warnings.warn(str(exc), stacklevel=2)
            return failed
        pipeline = _RayPipeline(self.ray, steps, shards, self.max_attempts, poll)
        pipeline.run()
        return pipeline.failed


class _RayPipeline:
    """The scheduling loop over Ray actors."""

    def __init__(self, ray: Any, steps: list[Step], shards: list[str], max_attempts: int,
                 poll: Callable[[], None] | None = None):
        self.ray, self.steps, self.max_attempts, self.poll = ray, steps, max_attempts, poll
        resources = ray.cluster_resources()
        self.cpus, self.gpus_total = max(1, int(resources.get("CPU", 1))), resources.get("GPU", 0.0)
        self.remote = [ray.remote(num_cpus=0 if s.gpus else 1, num_gpus=s.gpus, max_restarts=0)(s.worker_cls)
                       for s in steps]
        self.limit = [self._limit(s, len(shards)) for s in steps]
        self.ready = [deque(shards)] + [deque() for _ in steps[1:]]
        self.idle: list[list[Any]] = [[] for _ in steps]
        self.alive = [0] * len(steps)
        self.running: dict[Any, tuple[int, Any, str]] = {}
        self.finished = [0] * len(steps)
        self.n_shards = len(shards)
        self.deaths: Counter = Counter()
        self.failed: dict[str, str] = {}

    def _limit(self, step: Step, n_shards: int) -> int:
        if step.gpus > 0:
            n = int(self.gpus_total // step.gpus)
            if n < 1:
                raise ConfigError(f"a GPU stage asks for {step.gpus} GPU per worker but the cluster has "
                                  f"{self.gpus_total} GPUs; set device=cpu or add GPUs")
            return min(n, n_shards)
        return min(self.cpus, n_shards)

    def _cpu_actors(self) -> int:
        return sum(a for a, s in zip(self.alive, self.steps) if not s.gpus)

    def _actor(self, i: int) -> Any | None:
        if self.idle[i]:
            return self.idle[i].pop()
        if self.alive[i] >= self.limit[i]:
            return None
        cpu_ok = self.steps[i].gpus > 0 or self._cpu_actors() < self.cpus or self._evict_idle_cpu(i)
        if cpu_ok:
            self.alive[i] += 1
            return self.remote[i].remote(*self.steps[i].args)
        return None

    def _evict_idle_cpu(self, wanted: int) -> bool:
        """Free a CPU held by an idle actor of another step that has nothing queued."""
        for j, step in enumerate(self.steps):
            if j != wanted and not step.gpus and self.idle[j] and not self.ready[j]:
                self.ray.kill(self.idle[j].pop())
                self.alive[j] -= 1
                return True
        return False

    def _retire_all(self) -> None:
        for j in range(len(self.steps)):
            self._retire(j)

    def _retire(self, i: int) -> None:
        """Step i will get no more work: free its actors for later steps."""
        if self.finished[i] == self.n_shards:
            for actor in self.idle[i]:
                self.ray.kill(actor)
            self.alive[i] -= len(self.idle[i])
            self.idle[i].clear()

    def _submit(self) -> None:
        for i in reversed(range(len(self.steps))):  # later steps first: drain the pipeline
            while self.ready[i]:
                actor = self._actor(i)
                if actor is None:
                    break
                shard = self.ready[i].popleft()
                self.running[actor.run_shard.remote(shard)] = (i, actor, shard)

    def run(self) -> None:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
        from ray.exceptions import WorkerCrashedError

        died = (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError)
        try:
            while any(self.ready) or self.running:
                self._submit()
                ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=1.0)
                if not ready:  # nothing finished this second: show what the workers reported
                    if self.poll is not None:
                        self.poll()
                    continue
                (ref,) = ready
                i, actor, shard = self.running.pop(ref)
                try:
                    result = self.ray.get(ref)
                except died as exc:
                    self._died(i, actor, shard, exc)
                    continue
                except RayTaskError as exc:
                    if not isinstance(exc.cause, ShardError):
                        raise
                    self.idle[i].append(actor)
                    self.failed[shard] = str(exc.cause)
                    warnings.warn(str(exc.cause), stacklevel=2)
                    self.finished[i:] = [f + 1 for f in self.finished[i:]]  # it leaves every later step
                    self._retire_all()
                    continue
                self.idle[i].append(actor)
                self.finished[i] += 1
                if i + 1 < len(self.steps):
                    self.ready[i + 1].append(shard)
                self.steps[i].done(result)
                self._retire(i)
        finally:
            for actor in [a for idle in self.idle for a in idle] + [a for _, a, _ in self.running.values()]:
                self.ray.kill(actor)

    def _died(self, i: int, actor: Any, shard: str, exc: BaseException) -> None:
        self.deaths[(i, shard)] += 1
        self.steps[i].worker_died(shard, self.deaths[(i, shard)], self.max_attempts, type(exc).__name__)
        self.ray.kill(actor)
        self.alive[i] -= 1
        self.ready[i].appendleft(shard)
