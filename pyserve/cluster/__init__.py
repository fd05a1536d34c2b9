"""Many engines: the program-aware router, Ray replicas and the Ray cluster client.

``Router`` needs only the C++ core; ``RayCluster`` and the replica actor need ``ray`` (the
``dist`` extra) and import it lazily.
"""

from pyserve.cluster.router import (
    LOAD_SIGNALS,
    ROUTING_POLICIES,
    ProgramValues,
    Router,
    RouterOptions,
)

__all__ = ["LOAD_SIGNALS", "ROUTING_POLICIES", "ProgramValues", "Router", "RouterOptions"]
