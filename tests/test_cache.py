"""The watch cache, on data: event order, listings, our own writes, what is kept of an object."""

from __future__ import annotations

import pytest

from modeldeploy.cache import CachedCluster, WatchCache, selector_matches, slim
from modeldeploy.intent import replicas_owned_by_others
from modeldeploy.kube import DEPLOYMENT, POD, SERVICE, SERVICE_MONITOR, ApiError
from tests.support.fake_cluster import FakeCluster

NS = "vision"


def obj(name="simple", version="10", uid="u1", namespace=NS, labels=None, **extra):
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": version,
                         "labels": labels or {}}, **extra}


def listed(*kinds):
    cache = WatchCache()
    for kind in kinds:
        cache.replace(kind, [], "1")
    return cache


def test_an_older_event_never_overwrites_a_newer_one():
    cache = listed(SERVICE)
    assert cache.observe(SERVICE, "MODIFIED", obj(version="12", spec={"v": 2}))
    assert not cache.observe(SERVICE, "MODIFIED", obj(version="11", spec={"v": 1}))
    assert cache.get(SERVICE, NS, "simple")["spec"] == {"v": 2}


def test_a_deleted_objects_late_event_does_not_hide_its_same_named_successor():
    # kopf runs each uid's events in a worker of its own: the old object's DELETED may come after
    # the new one's ADDED, or an old MODIFIED after the deletion.
    cache = listed(SERVICE)
    cache.observe(SERVICE, "ADDED", obj(uid="new", version="20"))
    cache.observe(SERVICE, "DELETED", obj(uid="old", version="19"))
    assert cache.get(SERVICE, NS, "simple")["metadata"]["uid"] == "new"
    cache.observe(SERVICE, "DELETED", obj(uid="new", version="25"))
    assert not cache.observe(SERVICE, "MODIFIED", obj(uid="new", version="24"))  # the tombstone holds
    assert cache.get(SERVICE, NS, "simple") is None


def test_nothing_is_served_before_a_kind_is_listed():
    cache = WatchCache()
    cache.observe(SERVICE, "ADDED", obj())
    assert not cache.serves(SERVICE, NS)
    cache.replace(SERVICE, [obj(version="5")], "5", namespace="other")
    assert cache.serves(SERVICE, "other") and not cache.serves(SERVICE, NS)
    cache.replace(SERVICE, [], "6")
    assert cache.serves(SERVICE, NS)


def test_a_listing_drops_what_vanished_while_the_watch_was_broken():
    cache = listed(POD)
    cache.observe(POD, "ADDED", obj("a", version="10"))
    cache.observe(POD, "ADDED", obj("b", version="11"))
    cache.observe(POD, "ADDED", obj("c", version="40"))  # created after the listing below was taken
    dropped = cache.replace(POD, [obj("a", version="10")], "30")
    assert [p["metadata"]["name"] for p in dropped] == ["b"]
    assert [p["metadata"]["name"] for p in cache.list(POD, NS, "")] == ["a", "c"]
    # An event older than the listing, for an object the listing did not have, is stale.
    assert not cache.observe(POD, "MODIFIED", obj("b", version="12"))
    assert cache.get(POD, NS, "b") is None
    assert cache.observe(POD, "ADDED", obj("b", uid="u2", version="31"))


def test_a_listing_in_one_namespace_leaves_the_others_alone():
    cache = WatchCache()
    cache.replace(SERVICE, [obj("x", namespace="a"), obj("y", namespace="b")], "10")
    cache.replace(SERVICE, [], "12", namespace="a")
    assert cache.get(SERVICE, "a", "x") is None and cache.get(SERVICE, "b", "y") is not None


def test_non_numeric_resource_versions_take_the_latest_arrival():
    cache = listed(SERVICE)
    cache.observe(SERVICE, "ADDED", obj(version="b", spec={"v": 1}))
    cache.observe(SERVICE, "MODIFIED", obj(version="a", spec={"v": 2}))
    assert cache.get(SERVICE, NS, "simple")["spec"] == {"v": 2}


def test_our_own_delete_is_forgotten_at_once_but_only_for_that_uid():
    cache = listed(SERVICE_MONITOR)
    cache.observe(SERVICE_MONITOR, "MODIFIED", obj(uid="mine", version="10"))
    cache.deleted(SERVICE_MONITOR, NS, "simple", uid="someone-elses")
    assert cache.get(SERVICE_MONITOR, NS, "simple") is not None
    cache.deleted(SERVICE_MONITOR, NS, "simple", uid="mine")
    assert cache.get(SERVICE_MONITOR, NS, "simple") is None
    assert not cache.observe(SERVICE_MONITOR, "MODIFIED", obj(uid="mine", version="9"))


def test_what_is_kept_of_an_object_answers_what_the_reconciler_asks():
    hpa_owned = {"manager": "kube-controller-manager", "operation": "Update",
                 "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    ours = {"manager": "modeldeploy", "operation": "Apply",
            "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}}}
    deployment = obj(spec={"replicas": 3}, kind="Deployment")
    deployment["metadata"]["managedFields"] = [ours, hpa_owned]
    kept = slim(DEPLOYMENT, deployment)
    assert replicas_owned_by_others(kept) and kept["spec"] == {"replicas": 3}
    assert "f:template" not in str(kept["metadata"]["managedFields"])
    deployment["metadata"]["managedFields"] = [ours]
    assert not replicas_owned_by_others(slim(DEPLOYMENT, deployment))
    service = obj()
    service["metadata"]["managedFields"] = [ours]
    assert "managedFields" not in slim(SERVICE, service)["metadata"]


def test_what_the_cache_gives_out_is_a_copy():
    cache = listed(SERVICE)
    cache.observe(SERVICE, "ADDED", obj(spec={"ports": [1]}))
    cache.get(SERVICE, NS, "simple")["spec"]["ports"].append(2)
    cache.list(SERVICE, NS, "")[0]["spec"]["ports"].append(3)
    assert cache.get(SERVICE, NS, "simple")["spec"]["ports"] == [1]


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    ("", {}, True),
    ("a=1", {"a": "1", "b": "2"}, True),
    ("a=1,b=2", {"a": "1"}, False),
    ("a==1", {"a": "1"}, True),
    ("a=1", {"a": "2"}, False),
])
def test_equality_selectors(selector, labels, matches):
    assert selector_matches(selector, labels) is matches


def test_other_selectors_are_refused_rather_than_misread():
    with pytest.raises(ValueError):
        selector_matches("a!=1", {"a": "2"})
    with pytest.raises(ValueError):
        selector_matches("a in (1,2)", {"a": "1"})


async def test_a_kind_uninstalled_since_it_was_listed_is_learnt_from_the_api_servers_404():
    fake = FakeCluster()
    cache = listed(SERVICE_MONITOR)
    cluster = CachedCluster(fake, cache)
    assert await cluster.get(SERVICE_MONITOR, NS, "simple") is None and fake.calls == []
    fake.uninstall(SERVICE_MONITOR)
    with pytest.raises(ApiError):
        await cluster.get(SERVICE_MONITOR, NS, "simple", fresh=True)
    fake.reset_counters()
    with pytest.raises(ApiError) as raised:
        await cluster.get(SERVICE_MONITOR, NS, "simple")
    assert raised.value.not_found and fake.calls == []  # known now: no request
    cache.replace(SERVICE_MONITOR, [], "5")  # the next resync's listing finds it installed again
    assert await cluster.get(SERVICE_MONITOR, NS, "simple") is None
