"""The worker pool of the corpus builders: jobs in spawned processes, results as they finish."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence


def worker_init() -> None:
    """One torch thread per worker process: the processes are the parallelism."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@contextmanager
def run_jobs(fn: Callable[[Any], Any], tasks: Sequence[Any], *, workers: int, chunksize: int, desc: str,
             progress: bool = True) -> Iterator[Iterator[Any]]:
    """Yield an iterator over ``fn(task)`` results (unordered with workers > 1; in order in-process
    with one worker), advancing a progress bar per result. The pool is closed on a clean exit and
    terminated on an error or Ctrl-C, so no worker outlives the call."""
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="utt", desc=desc, disable=not progress, file=sys.stderr)
    pool = None
    try:
        if workers <= 1 or len(tasks) < 2:
            worker_init()
            results = map(fn, tasks)
        else:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(min(workers, len(tasks)), initializer=worker_init)
            results = pool.imap_unordered(fn, tasks, chunksize=chunksize)

        def counted():
            for result in results:
                yield result
                bar.update(1)

        yield counted()
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()
        bar.close()
