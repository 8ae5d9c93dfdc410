"""The rollout state machine (rollout.py): every transition, on data, and its properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from modeldeploy import rollout
from modeldeploy.errors import parse_model_deployment
from modeldeploy.render.deployment import pod_template_fingerprint, render_deployment
from modeldeploy.status import Observed, derive_status
from tests.support.specs import minimal
from tests.support.world import Report, deployment, pod

T0 = "2026-11-25T10:00:00Z"
IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
BAD_IMAGE = "registry.example.com/tritonserver:broken"


def md(version="3", *, image=IMAGE, generation=1, **spec):
    doc = minimal(**spec)
    doc["spec"]["model"]["version"] = version
    doc["spec"].setdefault("triton", {})["image"] = image
    doc["metadata"].update(uid="u", generation=generation)
    return parse_model_deployment(doc)


def at(seconds: int) -> str:
    return f"2026-11-25T10:{seconds // 60:02d}:{seconds % 60:02d}Z"


def fp(obj) -> str:
    return pod_template_fingerprint(obj)


def running(obj, replicas=2, **kw):
    """The Deployment with obj's template, rolled out on `replicas` pods (unless kw says otherwise)."""
    return deployment(obj.spec.model.version, replicas=replicas, template=fp(obj), **kw)


def pods_of(obj, n=2, prefix="p", **kw):
    return [pod(f"{prefix}{i}", obj.spec.model.version, template=fp(obj), **kw) for i in range(n)]


def ready_reports(pods):
    return {p["metadata"]["uid"]: Report() for p in pods}


def serving(obj, n=2):
    """obj's status once its template serves on n pods: the stable template is obj's."""
    pods = pods_of(obj, n, prefix=f"s{obj.spec.model.version}-")
    status = derive_status(obj, Observed(deployment=running(obj, n), pods=pods, reports=ready_reports(pods)), {}, T0)
    assert status["rollout"]["stableTemplate"] == fp(obj)
    return status


def decide(obj, previous, dep=None, pods=(), reports=None, now=T0):
    return rollout.decide(obj, previous, dep, list(pods), reports or {}, now)


# --- the stable template ---------------------------------------------------------------------

def test_first_deploy_has_no_stable_template_until_it_serves():
    v3 = md("3")
    first = decide(v3, {})
    assert first.stable is None and first.failure is None and first.render is v3 and first.pending
    pods = pods_of(v3)
    loading = decide(v3, {}, running(v3, ready=0, available=0), pods, {})
    assert loading.stable is None
    done = decide(v3, {}, running(v3), pods, ready_reports(pods))
    assert done.stable is not None and done.stable.fingerprint == fp(v3) and not done.pending


def test_the_stable_template_is_recorded_whole_in_status():
    v3 = md("3", resources={"requests": {"cpu": "2"}}, triton={"image": IMAGE, "args": ["--log-verbose=1"]})
    status = serving(v3)
    assert status["rollout"]["stableVersion"] == "3"
    sections = status["rollout"]["stableSpec"]
    assert set(sections) == {"model", "triton", "resources", "placement"}
    assert sections["triton"]["args"] == ["--log-verbose=1"] and sections["resources"]["requests"] == {"cpu": 2}


def test_triton_must_agree_before_a_template_is_stable():
    v3 = md("3")
    pods = pods_of(v3)
    not_loaded = {p["metadata"]["uid"]: Report(False, "ModelLoading", "loading") for p in pods}
    assert decide(v3, {}, running(v3), pods, not_loaded).stable is None
    assert decide(v3, {}, running(v3), pods, {}).stable is None  # not probed yet
    assert decide(v3, {}, running(v3, replicas=0), [], {}).stable is None  # no pods prove nothing


def test_a_template_still_rolling_out_is_not_stable():
    v3, v4 = md("3"), md("4", generation=2)
    previous = serving(v3)
    pods = pods_of(v4, 1)
    half = deployment("4", replicas=2, updated=1, total=3, template=fp(v4))
    decision = decide(v4, previous, half, pods + pods_of(v3, 2, prefix="old"), ready_reports(pods))
    assert decision.stable.fingerprint == fp(v3) and decision.pending and decision.failure is None
    assert decision.render is v4  # keep rolling out


def test_a_stable_spec_that_no_longer_parses_is_no_stable_template():
    v3 = md("3")
    broken = {"rollout": {"stableSpec": {"model": {"repository": "ftp://nowhere", "version": "3"}}}}
    assert decide(v3, broken).stable is None
    assert decide(v3, {"rollout": {"stableSpec": "garbage"}}).stable is None


def test_the_stable_fingerprint_is_recomputed_by_todays_renderer():
    v3 = md("3")
    previous = serving(v3)
    previous["rollout"]["stableTemplate"] = "0123456789abcdef"  # as an older operator fingerprinted it
    decision = decide(v3, previous)
    assert decision.stable.fingerprint == fp(v3) and not decision.pending


# --- failure evidence ------------------------------------------------------------------------

def test_tritons_load_failure_on_one_pod_fails_the_target_at_once():
    v3, v4 = md("3"), md("4", generation=2)
    new = pods_of(v4, 1, prefix="new")
    reports = {**ready_reports(pods_of(v3, 2, prefix="old")),
               "uid-new0": Report(False, "ModelLoadFailed", "weights file missing")}
    decision = decide(v4, serving(v3), running(v4, updated=1, total=3), new + pods_of(v3, 2, prefix="old"), reports)
    assert decision.failure == rollout.Failure(fp(v4), "4", "pod new0: weights file missing")
    assert decision.rolling_back and fp(decision.render) == fp(v3)


def test_a_version_triton_does_not_have_fails_the_target():
    v3, v9 = md("3"), md("9", generation=2)
    new = pods_of(v9, 1, prefix="new")
    reports = {"uid-new0": Report(False, "VersionNotLoaded", "version 9 of simple is not loaded")}
    assert decide(v9, serving(v3), running(v9, updated=1), new, reports).failure.version == "9"


def test_version_not_loaded_counts_only_once_the_pin_loaded_sidecar_has_settled():
    """s3/gs/as: Triton first loads what the repository's policy says; the sidecar then pins the
    version, and says so by turning Ready."""
    v3, v4 = md("3"), md("4", generation=2)
    new = pods_of(v4, 1, prefix="new")
    reports = {"uid-new0": Report(False, "VersionNotLoaded", "resnet50 version 4 is not loaded (loaded: 5)")}
    for sidecar_ready, fails in ((False, False), (True, True)):
        new[0]["status"]["containerStatuses"] = [
            {"name": "triton", "ready": False, "state": {"running": {}}, "started": True},
            {"name": "pin-loaded", "ready": sidecar_ready, "state": {"running": {}}}]
        decision = decide(v4, serving(v3), running(v4, updated=1, ready=0), new, reports)
        assert (decision.failure is not None) is fails


def test_restarts_fail_the_target_only_at_the_threshold():
    v3, bad = md("3"), md("3", image=BAD_IMAGE, generation=2)
    previous = serving(v3)
    for restarts, fails in ((1, False), (2, False), (3, True)):
        pods = [pod("new", "3", template=fp(bad), ready=False, restarts=restarts), *pods_of(v3, 2, prefix="old")]
        decision = decide(bad, previous, running(bad, updated=1, ready=0), pods, {})
        assert (decision.failure is not None) is fails, restarts
    assert "container triton restarted 3 times; last exit code 1 (Error)" in decision.failure.message


def test_the_restart_threshold_is_the_specs():
    v3, bad = md("3"), md("3", image=BAD_IMAGE, generation=2, rollout={"failAfterRestarts": 1})
    pods = [pod("new", "3", template=fp(bad), ready=False, restarts=1)]
    assert decide(bad, serving(v3), running(bad, updated=1, ready=0), pods, {}).failure is not None


def test_init_container_restarts_count():
    v3, bad = md("3"), md("3", image=BAD_IMAGE, generation=2)
    looping = pod("new", "3", template=fp(bad), ready=False)
    looping["status"]["initContainerStatuses"] = [{"name": "pin-version", "restartCount": 4,
                                                   "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]
    decision = decide(bad, serving(v3), running(bad, updated=1, ready=0), [looping], {})
    assert "container pin-version restarted 4 times" in decision.failure.message


def test_an_unhealthy_wait_fails_the_target_after_the_grace_and_not_before():
    v3, bad = md("3"), md("3", image=BAD_IMAGE, generation=2, rollout={"failAfterUnhealthySeconds": 60})
    previous = serving(v3)
    pulling = [pod("new", "3", template=fp(bad), ready=False, waiting="ImagePullBackOff")]
    dep = running(bad, updated=1, ready=0)
    first = decide(bad, previous, dep, pulling, {}, now=at(0))
    assert first.failure is None and first.unhealthy_since == at(0) and first.recheck_after == 60
    previous = derive_status(bad, Observed(deployment=dep, pods=pulling), previous, at(0), first)
    assert previous["rollout"]["unhealthySince"] == at(0)
    later = decide(bad, previous, dep, pulling, {}, now=at(45))
    assert later.failure is None and later.unhealthy_since == at(0) and later.recheck_after == 15
    done = decide(bad, previous, dep, pulling, {}, now=at(60))
    assert done.failure is not None and done.failure.message.endswith("(for 60 s)")
    assert "ImagePullBackOff" in done.failure.message and done.unhealthy_since is None


def test_the_unhealthy_clock_stops_when_the_pod_recovers_and_restarts_for_a_new_target():
    v3, bad = md("3"), md("3", image=BAD_IMAGE, generation=2)
    previous = {**serving(v3)}
    previous["rollout"] = {**previous["rollout"], "targetTemplate": fp(bad), "unhealthySince": at(0)}
    dep = running(bad, updated=1, ready=0)
    recovered = decide(bad, previous, dep, [pod("new", "3", template=fp(bad), ready=False)], {}, now=at(200))
    assert recovered.failure is None and recovered.unhealthy_since is None
    other = md("3", image=BAD_IMAGE + "2", generation=3)
    waiting = [pod("new", "3", template=fp(other), ready=False, waiting="CrashLoopBackOff")]
    fresh = decide(other, previous, running(other, updated=1, ready=0), waiting, {}, now=at(200))
    assert fresh.failure is None and fresh.unhealthy_since == at(200)


def test_the_progress_deadline_fails_the_target_it_ran_on():
    v3, v4 = md("3"), md("4", generation=2)
    stuck = running(v4, updated=1, deadline_exceeded=True)
    decision = decide(v4, serving(v3), stuck, [], {})
    assert decision.failure is not None and "timed out progressing" in decision.failure.message


def test_the_deadline_of_another_template_is_no_evidence_against_the_target():
    v3, v4 = md("3"), md("4", generation=2)
    stuck_on_old = running(v3, deadline_exceeded=True)  # the spec changed, the Deployment not yet
    assert decide(v4, serving(v3), stuck_on_old, [], {}).failure is None


def test_pods_of_other_templates_are_no_evidence():
    v3, v4 = md("3"), md("4", generation=2)
    old_crashing = [pod("old", "3", template=fp(v3), ready=False, restarts=9, waiting="CrashLoopBackOff")]
    decision = decide(v4, serving(v3), running(v4, updated=0), old_crashing, {}, now=at(3000))
    assert decision.failure is None


def test_the_stable_template_never_fails():
    v3 = md("3")
    crashing = [pod("p0", "3", template=fp(v3), ready=False, restarts=50, waiting="CrashLoopBackOff")]
    reports = {"uid-p0": Report(False, "ModelLoadFailed", "disk gone")}
    decision = decide(v3, serving(v3), running(v3, ready=1), crashing, reports, now=at(3000))
    assert decision.failure is None and not decision.rolling_back and decision.render is v3


# --- after a failure -------------------------------------------------------------------------

def failed_status(stable, target, message="pod new0: weights file missing"):
    """The status written by the reconcile that failed `target` and started rolling back to `stable`."""
    previous = serving(stable)
    new = pods_of(target, 1, prefix="new")
    reports = {"uid-new0": Report(False, "ModelLoadFailed", message.removeprefix("pod new0: "))}
    dep = running(target, updated=1, ready=0)
    decision = decide(target, previous, dep, new, reports)
    assert decision.failure is not None
    return derive_status(target, Observed(deployment=dep, pods=new, reports=reports), previous, T0, decision)


def test_the_failure_is_held_while_the_spec_asks_for_the_same_template():
    v3, v4 = md("3"), md("4", generation=2)
    failed = failed_status(v3, v4)
    assert failed["rollout"]["failedTemplate"] == fp(v4) and failed["rollout"]["failedVersion"] == "4"
    back = running(v3)
    pods = pods_of(v3)
    autoscaled = md("4", generation=4, autoscaling={"maxReplicas": 4, "targetQueueTimeMicroseconds": 500})
    for same in (v4, md("4", generation=3, replicas=5), autoscaled):
        decision = decide(same, failed, back, pods, ready_reports(pods))
        assert decision.failure.message == "pod new0: weights file missing", same.spec
        assert fp(decision.render) == fp(v3)


def test_a_failed_pod_that_recovers_does_not_clear_the_failure():
    v3, v4 = md("3"), md("4", generation=2)
    failed = failed_status(v3, v4)
    healthy = pods_of(v4, 1, prefix="new")
    decision = decide(v4, failed, running(v4, updated=1), healthy, ready_reports(healthy))
    assert decision.failure is not None and decision.rolling_back


def test_a_new_change_to_the_pods_clears_the_failure():
    v3, v4 = md("3"), md("4", generation=2)
    failed = failed_status(v3, v4)
    fixed = md("4", image="nvcr.io/nvidia/tritonserver:24.09-py3", generation=3)
    decision = decide(fixed, failed, running(v3), pods_of(v3), {})
    assert decision.failure is None and decision.render is fixed
    status = derive_status(fixed, Observed(deployment=running(v3), pods=pods_of(v3)), failed, T0, decision)
    assert status["rollout"]["failedTemplate"] == status["rollout"]["failureMessage"] == ""


def test_going_back_to_the_stable_spec_is_idle():
    v3, v4 = md("3"), md("4", generation=2)
    failed = failed_status(v3, v4)
    pods = pods_of(v3)
    decision = decide(md("3", generation=3), failed, running(v3), pods, ready_reports(pods))
    assert not decision.pending and decision.failure is None
    assert rollout.phase(decision, running(v3)).name == "Idle"


def test_a_rollback_restores_the_whole_template():
    good = md("3", resources={"requests": {"cpu": "2", "memory": "4Gi"}}, triton={"image": IMAGE, "args": ["--a"]})
    bad = md("4", generation=2, resources={"requests": {"cpu": "1"}},
             triton={"image": BAD_IMAGE, "args": ["--b"], "startupTimeoutSeconds": 60}, replicas=4)
    failed = failed_status(good, bad)
    decision = decide(bad, failed, running(bad, updated=1, ready=0), [], {})
    rendered = render_deployment(decision.render, replicas=4)
    assert rendered["spec"]["template"] == render_deployment(good, replicas=4)["spec"]["template"]
    assert rendered["spec"]["replicas"] == 4  # what the spec says of everything else stays


def test_no_rollback_when_disabled_or_nothing_to_go_back_to():
    v3, v4 = md("3"), md("4", generation=2, rollout={"autoRollback": False})
    new = pods_of(v4, 1, prefix="new")
    reports = {"uid-new0": Report(False, "ModelLoadFailed", "bad")}
    dep = running(v4, updated=1, ready=0)
    kept = decide(v4, serving(v3), dep, new, reports)
    assert kept.failure is not None and not kept.rolling_back and kept.render is v4
    assert rollout.phase(kept, dep).name == "Failed"
    first = decide(md("4"), {}, dep, new, reports)
    assert first.failure is not None and first.stable is None and not first.rolling_back


def test_a_failed_first_template_that_later_serves_is_good_after_all():
    v4 = md("4")
    new = pods_of(v4, 1, prefix="new")
    dep = running(v4, replicas=1, updated=1, ready=0)
    reports = {"uid-new0": Report(False, "ModelLoadFailed", "bucket not reachable yet")}
    first = decide(v4, {}, dep, new, reports)
    status = derive_status(v4, Observed(deployment=dep, pods=new, reports=reports), {}, T0, first)
    assert status["rollout"]["phase"] == "Failed"
    healed = decide(v4, status, running(v4, replicas=1), new, ready_reports(new))
    assert healed.failure is None and healed.stable.fingerprint == fp(v4)


# --- phases ----------------------------------------------------------------------------------

def test_phases_through_a_rollback():
    v3, v4 = md("3"), md("4", generation=2)
    failed = failed_status(v3, v4)
    assert failed["rollout"]["phase"] == "Progressing"
    assert failed["rollout"]["message"].startswith("version 4 failed; rolling back to version 3")
    decision = decide(v4, failed, running(v3), pods_of(v3), ready_reports(pods_of(v3)))
    done = rollout.phase(decision, running(v3))
    assert (done.name, done.reason, done.progressing) == ("RolledBack", "RolledBack", False)
    assert done.message == "version 4 failed and was rolled back to version 3: pod new0: weights file missing"


def test_an_image_change_is_described_by_what_changed():
    v3, bad = md("3"), md("3", image=BAD_IMAGE, generation=2)
    failed = failed_status(v3, bad, "pod new0: boom")
    assert failed["rollout"]["failedVersion"] == "3"
    assert failed["rollout"]["message"].startswith(f"the change of triton.image ({IMAGE} → {BAD_IMAGE}) failed")


def test_describe_change_says_how_many_more():
    v3 = md("3")
    many = md("4", image=BAD_IMAGE, resources={"requests": {"cpu": "1", "memory": "1Gi"}})
    text = rollout.describe_change(rollout.template_of(v3), rollout.template_of(many))
    assert text.startswith("the change of model.version (3 → 4), resources.requests.cpu (unset → 1)")
    assert text.endswith("and 1 more")  # triton.image


def test_phase_of_an_ordinary_rollout():
    v3, v4 = md("3"), md("4", generation=2)
    decision = decide(v4, serving(v3))
    assert rollout.phase(decision, running(v4, updated=1)).name == "Progressing"
    assert rollout.phase(decision, running(v4)).name == "Idle"
    assert rollout.phase(decide(v3, {}), running(v3, deadline_exceeded=True)).name == "Failed"


# --- properties ------------------------------------------------------------------------------

TEMPLATES = [md("1"), md("2"), md("1", image=BAD_IMAGE), md("2", resources={"requests": {"cpu": "1"}})]
# Mostly healthy, so templates become stable and later ones fail against them.
HEALTH = st.sampled_from(["ready"] * 5 + ["loading", "load_failed", "restarting", "image_pull", "crash_once"])


def _world(obj, rendered_before, health: str, replicas: int, complete: bool):
    """The Deployment as the API server has it after the last reconcile, and its pods in `health`."""
    if rendered_before is None:
        return None, [], {}
    if fp(rendered_before) == fp(TEMPLATES[2]) and health == "ready":
        health = "restarting"  # the broken image never serves
    ready = health == "ready"
    dep = deployment(rendered_before.spec.model.version, replicas=replicas, template=fp(rendered_before),
                     updated=replicas if complete else max(0, replicas - 1), ready=replicas if ready else 0)
    pods = [pod(f"p{i}", rendered_before.spec.model.version, template=fp(rendered_before), ready=ready,
                restarts={"restarting": 3, "crash_once": 1}.get(health, 0),
                waiting="ImagePullBackOff" if health == "image_pull" else None) for i in range(replicas)]
    reason = {"load_failed": ("ModelLoadFailed", "bad"), "loading": ("ModelLoading", "loading")}.get(health)
    reports = {p["metadata"]["uid"]: Report() if reason is None else Report(False, *reason) for p in pods
               if health in ("ready", "load_failed", "loading")}
    return dep, pods, reports


# Per reconcile: a new spec (an index into TEMPLATES) or the same one (None), replicas, the pods'
# health, whether the Deployment finished rolling out, autoRollback, and the seconds since the last.
steps = st.lists(st.tuples(st.one_of(*[st.none()] * 4, st.integers(0, len(TEMPLATES) - 1)), st.integers(1, 3),
                           HEALTH, st.sampled_from([True, True, False]), st.sampled_from([True, True, False]),
                           st.integers(0, 400)), min_size=1, max_size=20)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_never_renders_a_failed_template_while_a_good_one_exists(history):
    previous: dict = {}
    rendered = None
    failed: set[str] = set()  # templates seen failing while the spec asked for them
    proven: set[str] = set()  # templates seen serving on every pod with Triton agreeing
    clock, choice = 0, 0
    for new_choice, replicas, health, complete, auto_rollback, wait in history:
        clock += wait
        choice = choice if new_choice is None else new_choice
        spec = TEMPLATES[choice].model_copy(deep=True)
        spec.spec.replicas = replicas
        spec.spec.rollout.auto_rollback = auto_rollback
        dep, pods, reports = _world(spec, rendered, health, replicas, complete)
        if dep is not None and complete and health == "ready":
            proven.add(fp(rendered))
        now = f"2026-11-25T{10 + clock // 3600:02d}:{clock // 60 % 60:02d}:{clock % 60:02d}Z"
        decision = rollout.decide(spec, previous, dep, pods, reports, now)
        target = fp(spec)
        # Never a failed template while a good one exists, and nothing but a proven one is "good".
        if decision.failure is not None:
            failed.add(decision.failure.template)
            assert decision.failure.template == target
            if auto_rollback and decision.stable is not None:
                assert fp(decision.render) == decision.stable.fingerprint != target
        if decision.stable is not None:
            assert decision.stable.fingerprint in proven
        assert fp(decision.render) in (target, getattr(decision.stable, "fingerprint", None))
        # What the pods ran is the render; the next reconcile sees it (as stored after apply).
        changed = rendered is None or fp(decision.render) != fp(rendered)
        rendered = decision.render
        after = deployment(rendered.spec.model.version, replicas=replicas, template=fp(rendered),
                           generation=2 if changed else 1, observed_generation=1)
        previous = derive_status(spec, Observed(deployment=after, pods=pods, reports=reports), previous, now,
                                 decision)
        assert previous["rollout"]["failedTemplate"] in ("", target)
        if previous["rollout"]["failedTemplate"]:
            assert previous["rollout"]["failureMessage"]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(TEMPLATES) - 1), st.integers(0, len(TEMPLATES) - 1), st.integers(1, 5))
def test_rendering_the_stable_sections_reproduces_the_stable_template(stable_choice, spec_choice, replicas):
    stable, spec = TEMPLATES[stable_choice], TEMPLATES[spec_choice].model_copy(deep=True)
    spec.spec.replicas = replicas
    restored = rollout.with_sections(spec, rollout.template_of(stable).sections)
    assert fp(restored) == fp(stable)
    assert render_deployment(restored, replicas=replicas)["spec"]["replicas"] == replicas
