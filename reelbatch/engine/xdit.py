"""The ``xdit`` backend (xfuser): CUDA only, imported lazily.

xfuser cannot even be imported without a GPU (it needs triton and raises "No Accelerators available" at import),
so nothing here imports it at module level, and nothing imports it at all unless a job asks for ``backend xdit``
on a CUDA machine. This engine does not drive xfuser's pipelines yet: on CUDA the check confirms xfuser imports and
then refuses the job with a clear message (``engine/checks.py``), rather than silently running it on the native
backend.
"""

from __future__ import annotations


def import_xfuser():
    """Import xfuser (CUDA machines only); a clear RuntimeError when it is missing or cannot load."""
    try:
        import xfuser
    except Exception as exc:  # ImportError, or xfuser's own "No Accelerators available"
        raise RuntimeError(
            f"backend xdit: cannot import xfuser ({type(exc).__name__}: {exc}); install it with "
            "`pip install 'reelbatch[xdit]'` on a CUDA machine, or use backend native"
        ) from exc
    return xfuser
