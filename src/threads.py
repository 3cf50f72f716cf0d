"""numba's OpenMP layer resets torch's intra-op thread count when a parallel kernel runs; every
caller of a numba kernel next to torch work restores it with this one context manager."""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Run the block, then put torch's thread count back to what it was before."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
