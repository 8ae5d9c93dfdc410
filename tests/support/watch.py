"""A watch cache over the in-memory cluster, fed the way the operator's watches feed it."""

from __future__ import annotations

from modeldeploy import naming
from modeldeploy.cache import CachedCluster, WatchCache
from modeldeploy.operator import CACHED_KINDS, watch_selector
from tests.support.fake_cluster import FakeCluster


def watch_cached(fake: FakeCluster, *, lagging: list | None = None) -> CachedCluster:
    """The fake behind a watch cache fed by its watch as the operator's are: children and pods only
    with our managed-by label (an object that loses it is DELETED to a label-selected watch), after a
    first listing of every kind. Events are delivered at once, or held in `lagging` until the test
    delivers them."""
    cache = WatchCache()

    def feed(kind, event_type, obj):
        if watch_selector(kind) and naming.owner_of(obj["metadata"].get("labels")) is None:
            event_type = "DELETED"
        if lagging is None:
            cache.observe(kind, event_type, obj)
        else:
            lagging.append((kind, event_type, obj))

    fake.watch(feed)
    for kind in CACHED_KINDS:
        cache.replace(kind, fake.list_now(kind, label_selector=watch_selector(kind)), fake.version)
    return CachedCluster(fake, cache)
