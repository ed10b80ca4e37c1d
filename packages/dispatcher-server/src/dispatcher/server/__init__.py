"""The dispatcher service: receives task messages and runs them in worker subprocesses.

The service itself is not built yet; this distribution so far only fixes the package and its
dependencies.
"""

__all__: list[str] = []
