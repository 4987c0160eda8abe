"""How a job fails: the codes and messages a person can act on, for errors expected by name
(JobFailed) and for those that were not (classify)."""

from __future__ import annotations

import re

from shared.jobs import JobError


class JobFailed(Exception):
    """A failure with a code and a message for the person who submitted the job."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.error = JobError(code, message)


def release_gpu_memory() -> None:
    """Give the allocator's cached blocks back once the failed job's tensors are gone, so the
    next job starts with the whole GPU."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# How torch's native code words a failed host allocation: its own allocator, C++'s, oneDNN's.
_HOST_OOM = re.compile(r"can't allocate memory|not enough memory|std::bad_alloc|out of memory", re.IGNORECASE)


def classify(err: BaseException) -> tuple[str, str]:
    """A failure code and message for an exception the runner did not expect by name."""
    name = type(err).__name__
    if name == "SoftTimeLimitExceeded":
        return "timeout", "the job ran past its time limit; submit it with fewer iterations or a smaller size"
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and _HOST_OOM.search(str(err))):
        return "out_of_memory", "the worker ran out of memory; submit again with a smaller size"
    return "internal_error", f"the worker failed unexpectedly ({name}); the operators have the details in its log"
