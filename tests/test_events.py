"""Events are posted on transitions only."""

from __future__ import annotations

from modeldeploy.events import events_for


def status(ready="True", degraded=("False", "AsExpected", ""), current="3", target="3"):
    return {"currentVersion": current, "targetVersion": target, "conditions": [
        {"type": "Ready", "status": ready, "reason": "ModelServing", "message": "serving"},
        {"type": "Degraded", "status": degraded[0], "reason": degraded[1], "message": degraded[2]}]}


def test_steady_state_posts_nothing():
    assert events_for(status(), status()) == []


def test_children_created_updated_deleted():
    child = {"kind": "Service", "metadata": {"name": "m"}}
    events = events_for(status(), status(), created=[child], updated=[child], deleted=[child])
    assert [(e.type, e.reason) for e in events] == [("Normal", "Created"), ("Normal", "Updated"),
                                                    ("Normal", "Deleted")]


def test_rollout_started_and_complete():
    started = events_for(status(), status(target="4", ready="False"))
    assert [e.reason for e in started] == ["RolloutStarted"]
    done = events_for(status(target="4", ready="False"), status(current="4", target="4"))
    assert [e.reason for e in done] == ["RolloutComplete", "ModelServing"]


def test_degraded_warns_once_per_reason():
    broken = status(ready="False", degraded=("True", "CrashLoopBackOff", "pod p0 ..."))
    (warning,) = events_for(status(), broken)
    assert (warning.type, warning.reason, warning.message) == ("Warning", "CrashLoopBackOff", "pod p0 ...")
    assert events_for(broken, broken) == []
    other = status(ready="False", degraded=("True", "ModelLoadFailed", "x"))
    assert [e.reason for e in events_for(broken, other)] == ["ModelLoadFailed"]
