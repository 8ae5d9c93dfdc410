"""Property tests: any accepted spec renders valid manifests; any rejected one is a clear error."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeldeploy.errors import InvalidSpec, parse_model_deployment
from modeldeploy.render import render_manifests
from tests.support.manifests import validate_all

names = st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True)
versions = st.integers(min_value=1, max_value=10**6).map(str)
quantities = st.one_of(st.integers(min_value=1, max_value=64),
                       st.sampled_from(["500m", "2", "8Gi", "512Mi", "1.5", "100M"]))
int_or_percent = st.one_of(st.integers(min_value=0, max_value=5), st.sampled_from(["25%", "50%", "0%"]))

repositories = st.one_of(
    st.builds(lambda b, p: {"repository": f"s3://{b}/{p}"}, names, names),
    st.builds(lambda b, s: {"repository": f"gs://{b}/triton", "credentialsSecret": s}, names, names),
    st.builds(lambda c, p: {"repository": f"pvc://{c}/{p}"}, names, names),
    st.builds(lambda h, sha: {"repository": f"https://{h}.example.com/repo.tar.gz", "sha256": sha},
              names, st.from_regex(r"[a-f0-9]{64}", fullmatch=True)),
)

models = st.builds(lambda repo, version, name: {**repo, "version": version, **({"name": name} if name else {})},
                   repositories, versions, st.one_of(st.none(), names))

resources = st.fixed_dictionaries({}, optional={
    "gpu": st.integers(min_value=1, max_value=8),
    "requests": st.dictionaries(st.sampled_from(["cpu", "memory", "ephemeral-storage"]), quantities, max_size=3),
    "limits": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities, max_size=2),
    "sharedMemory": st.sampled_from(["64Mi", "1Gi", "2Gi"]),
})
mig_resources = st.fixed_dictionaries({"mig": st.sampled_from(["1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb"])})

tolerations = st.lists(st.fixed_dictionaries(
    {"key": names, "operator": st.just("Equal"), "value": names},
    optional={"effect": st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"])}), max_size=3)

placement = st.fixed_dictionaries({}, optional={
    "gpuProduct": st.sampled_from(["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-40GB"]),
    "nodeSelector": st.dictionaries(names, names, max_size=3),
    "tolerations": tolerations,
    "runtimeClassName": names,
    "priorityClassName": names,
})


@st.composite
def autoscaling(draw):
    low = draw(st.integers(min_value=1, max_value=10))
    out = {"minReplicas": low, "maxReplicas": draw(st.integers(min_value=low, max_value=20)),
           "targetQueueTimeMicroseconds": draw(st.integers(min_value=1, max_value=10**6))}
    return out


@st.composite
def specs(draw):
    spec = {"model": draw(models), "replicas": draw(st.integers(min_value=0, max_value=50)),
            "resources": draw(st.one_of(resources, mig_resources)), "placement": draw(placement)}
    if draw(st.booleans()):
        spec["autoscaling"] = draw(autoscaling())
    if draw(st.booleans()):
        spec["disruptionBudget"] = draw(st.sampled_from([{"maxUnavailable": 1}, {"minAvailable": "50%"},
                                                          {"maxUnavailable": "25%"}]))
    rollout = {"maxSurge": draw(int_or_percent), "maxUnavailable": draw(int_or_percent)}
    if str(rollout["maxSurge"]) not in ("0", "0%") or str(rollout["maxUnavailable"]) not in ("0", "0%"):
        spec["rollout"] = rollout
    spec["service"] = {"type": draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))}
    spec["monitoring"] = {"serviceMonitor": draw(st.booleans())}
    spec["triton"] = {"startupTimeoutSeconds": draw(st.integers(min_value=10, max_value=7200)),
                      "args": draw(st.lists(st.sampled_from(["--log-verbose=1", "--buffer-manager-thread-count=2"]),
                                            max_size=2))}
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": draw(names), "namespace": draw(names)}, "spec": spec}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_any_accepted_spec_renders_manifests_kubernetes_accepts(doc):
    validate_all(render_manifests(parse_model_deployment(doc)))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=12)

def about(problem: str, field: str) -> bool:
    """The problem names `field` or a path inside it ('spec.model.version: ...', 'spec.args[2]: ...'),
    then says what is wrong."""
    rest = problem.removeprefix(field)
    return rest != problem and rest[:1] in (".", "[", ":") and re.search(r": \S", rest) is not None


spec_keys = st.sampled_from(["model", "triton", "replicas", "resources", "placement", "autoscaling", "rollout",
                             "service", "disruptionBudget", "monitoring"])


@settings(max_examples=300, deadline=None)
@given(specs(), spec_keys, json_values)
def test_any_mangled_spec_is_accepted_or_refused_naming_that_field(doc, key, junk):
    """Only spec.<key> was changed, so every problem must be about spec.<key> (or inside it), by path."""
    doc["spec"][key] = junk
    try:
        md = parse_model_deployment(doc)
    except InvalidSpec as error:
        assert error.problems
        assert all(about(p, f"spec.{key}") for p in error.problems), error.problems
        return
    validate_all(render_manifests(md))


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_document_is_refused_naming_what_is_wrong(junk):
    """No JSON value of this size is a ModelDeployment: each is refused with InvalidSpec (never accepted,
    never another exception), every problem saying where: a top-level field's path, or what was expected."""
    with pytest.raises(InvalidSpec) as refused:
        parse_model_deployment(junk)
    problems = refused.value.problems
    if not isinstance(junk, dict):
        assert problems == [f"expected a ModelDeployment object, got {type(junk).__name__}"]
        return
    assert problems and all(any(about(p, field) for field in ("apiVersion", "kind", "metadata", "spec", "status"))
                            for p in problems), problems
    for required in ("metadata", "spec"):
        assert (f"{required}: is required" in problems) == (required not in junk)
