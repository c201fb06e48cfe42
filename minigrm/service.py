"""The engine as a service: one background thread runs engine steps for ever; requests from any
thread (or asyncio task) are admitted into the running batch between two steps.

    loop = EngineLoop(engine)
    future = loop.submit(prompts, params, seeds)     # concurrent.futures.Future -> outs[i][j]
    outs = future.result()                           # or: await asyncio.wrap_future(future)
    loop.close()                                     # finish what was admitted, then stop

This is continuous batching across callers: a request that arrives while others are decoding
does not wait for them to finish; its prompts are prefilled in the next step and decode in the
same batch, and the k judgments of one request share their prompt's prefix blocks (kv_cache.py).
One thread owns the engine, so the engine itself needs no locks. An exception inside a step is
given to every request in flight (their results are lost, the service keeps running with an
emptied engine); a request's own bad input (a prompt longer than the context) is answered with
finish_reason "error" by the engine, like any other completion.
"""
import threading
from concurrent.futures import Future


class _Job:
    def __init__(self, prompts, params, seeds):
        self.prompts, self.params, self.seeds = prompts, params, seeds
        self.future: Future = Future()
        self.outs: list[list] = []
        self.left = 0


class EngineLoop:
    def __init__(self, engine):
        self.engine = engine
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._where: dict[int, tuple[_Job, int, int]] = {}  # seq_id -> (job, prompt i, sample j)
        self._closing = False
        self.stats = {"requests": 0, "steps": 0}
        self._thread = threading.Thread(target=self._run, name="minigrm-engine", daemon=True)
        self._thread.start()

    def submit(self, prompts, params, seeds=None) -> Future:
        """Queue `prompts` (strings or token-id lists) with `params`; the future's result is
        outs[i][j], the j-th of params.n completions of prompts[i], as Engine.generate returns."""
        job = _Job(list(prompts), params, seeds)
        with self._cond:
            if self._closing:
                raise RuntimeError("the engine loop is shutting down")
            self._pending.append(job)
            self.stats["requests"] += 1
            self._cond.notify()
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Stop admitting requests, let the admitted ones finish, stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _admit(self, job: _Job) -> None:
        for i, prompt in enumerate(job.prompts):
            seed = None if job.seeds is None else job.seeds[i]
            added = self.engine.add(prompt, job.params, seed=seed)
            job.outs.append([None] * len(added))
            for j, x in enumerate(added):
                if hasattr(x, "seq_id"):
                    self._where[x.seq_id] = (job, i, j)
                    job.left += 1
                else:  # refused at once (e.g. longer than the context): its error completion
                    job.outs[i][j] = x
        if job.left == 0:
            job.future.set_result(job.outs)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self.engine.has_work() and not self._closing:
                    self._cond.wait()
                if self._closing and not self._pending and not self.engine.has_work():
                    return
                jobs, self._pending = self._pending, []
            for job in jobs:
                if job.future.set_running_or_notify_cancel():
                    self._admit(job)
            if not self.engine.has_work():
                continue
            try:
                finished = self.engine.step()
            except Exception as e:  # give the failure to everyone in flight, start clean
                for job in {job for job, _, _ in self._where.values()}:
                    if not job.future.done():
                        job.future.set_exception(e)
                self._where.clear()
                self.engine.abort_all()
                continue
            self.stats["steps"] += 1
            for seq in finished:
                job, i, j = self._where.pop(seq.seq_id)
                job.outs[i][j] = self.engine.completion(seq)
                job.left -= 1
                if job.left == 0:
                    job.future.set_result(job.outs)
