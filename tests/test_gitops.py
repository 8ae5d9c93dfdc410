"""GitOps health of a ModelDeployment, as Argo CD and Flux see it.

- Argo CD: deploy/argocd/health.lua, run in a real Lua 5.1 (lupa; Argo CD embeds gopher-lua, a Lua 5.1)
  the way Argo CD runs it: the object in the global `obj`, no io/os/debug libraries, a table returned.
- Flux: kstatus (sigs.k8s.io/cli-utils pkg/kstatus/status), read here for a custom resource, i.e. one
  with no built-in rules: only deletionTimestamp, generation vs. observedGeneration and the
  Reconciling/Stalled conditions count; a Ready condition alone means nothing to it.

Both read the statuses in tests/fixtures/gitops/*.yaml: each holds a ModelDeployment whose status is what
the operator derives for one situation, and the verdict each tool must reach. scripts/generate-gitops-fixtures.py
makes every one of them from a named scenario, and a test here checks that the files are what it makes now.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from lupa import lua51

from modeldeploy.api import CONDITION_TYPES

ROOT = Path(__file__).resolve().parents[1]
HEALTH_LUA = ROOT / "deploy" / "argocd" / "health.lua"
CM_PATCH = ROOT / "deploy" / "argocd" / "argocd-cm-patch.yaml"
CM_KEY = "resource.customizations.health.modeldeploy.dev_ModelDeployment"
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "gitops").glob("*.yaml"))
GENERATOR = ROOT / "scripts" / "generate-gitops-fixtures.py"

# What Argo CD accepts from a health script (anything else is an error, shown as Unknown).
ARGOCD_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def load_fixture(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


# --- Argo CD --------------------------------------------------------------------------------

def _to_lua(lua: Any, value: Any) -> Any:
    """JSON → Lua as Argo CD converts it: objects and arrays become tables (arrays 1-based), null is nil."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def _runtime(obj: dict[str, Any], *, sandboxed: bool = True) -> Any:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    if sandboxed:  # Argo CD opens only base, package, table, string and math for health scripts
        for name in ("io", "os", "debug"):
            lua.execute(f"{name} = nil")
    lua.globals().obj = _to_lua(lua, obj)
    return lua


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    result = _runtime(obj).execute(HEALTH_LUA.read_text())
    assert result is not None, "the script returned nothing"
    status, message = result["status"], result["message"]
    assert status in ARGOCD_STATUSES, status
    assert isinstance(message, str), message
    return status, message


# --- kstatus (Flux) -------------------------------------------------------------------------

def kstatus(obj: dict[str, Any]) -> tuple[str, str]:
    """kstatus.Compute for a kind without built-in rules: the generic checks, else Current.

    1. metadata.deletionTimestamp set → Terminating.
    2. metadata.generation and status.observedGeneration both present and different → InProgress
       (when either is absent the check is skipped).
    3. The first condition, in list order, that is Reconciling=True → InProgress with its message,
       or Stalled=True → Failed with its message.
    4. Otherwise Current: Ready, Degraded, Progressing and every other condition are not consulted.
    """
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating", "Resource scheduled for deletion"
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress", (f"{obj.get('kind')} generation is {generation}, "
                              f"but latest observed generation is {observed}")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Reconciling" and cond.get("status") == "True":
            return "InProgress", cond.get("message", "")
        if cond.get("type") == "Stalled" and cond.get("status") == "True":
            return "Failed", cond.get("message", "")
    return "Current", "Resource is current"


# --- the fixtures ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_argocd_health(path):
    fixture = load_fixture(path)
    expected = fixture["expect"]["argocd"]
    assert argocd_health(fixture["object"]) == (expected["status"], expected["message"])


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_flux_kstatus(path):
    fixture = load_fixture(path)
    assert kstatus(fixture["object"])[0] == fixture["expect"]["kstatus"]


def test_the_fixtures_reach_every_verdict_and_every_branch_of_the_script():
    fixtures = [load_fixture(p) for p in FIXTURES]
    assert {f["expect"]["argocd"]["status"] for f in fixtures} == {"Healthy", "Progressing", "Degraded", "Suspended"}
    assert {f["expect"]["kstatus"] for f in fixtures} == {"Current", "InProgress", "Failed", "Terminating"}
    # Every `return hs` in the script runs for at least one fixture (a line hook, as coverage tools use).
    script = HEALTH_LUA.read_text()
    returns = {n for n, line in enumerate(script.splitlines(), 1) if line.strip() == "return hs"}
    hit: set[int] = set()
    for fixture in fixtures:
        lua = _runtime(fixture["object"], sandboxed=False)
        lines = lua.table()
        lua.execute("local lines = ...; debug.sethook(function(_, n) lines[n] = true end, 'l')", lines)
        lua.execute(script)
        lua.execute("debug.sethook()")
        hit |= {int(n) for n in lines}
    assert returns and returns <= hit, f"never reached: lines {sorted(returns - hit)}"


def _json_schema(node: Any) -> Any:
    """The CRD's OpenAPI v3 schema as plain JSON Schema (the x-kubernetes-* extensions dropped)."""
    if isinstance(node, dict):
        return {k: _json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [_json_schema(v) for v in node]
    return node


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_statuses_are_ones_the_operator_writes(path):
    """Fixtures must not drift into statuses the CRD would refuse or the operator never writes."""
    obj = load_fixture(path)["object"]
    assert (obj["apiVersion"], obj["kind"]) == ("modeldeploy.dev/v1alpha1", "ModelDeployment")
    if "status" not in obj:
        return
    (crd,) = [d for d in yaml.safe_load_all((ROOT / "crds" / "modeldeployments.yaml").read_text()) if d]
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = _json_schema(version["schema"]["openAPIV3Schema"]["properties"]["status"])
    jsonschema.validate(obj["status"], schema)
    assert [c["type"] for c in obj["status"]["conditions"]] == list(CONDITION_TYPES)


def _generator() -> Any:
    """scripts/generate-gitops-fixtures.py, which makes every fixture from a named scenario."""
    spec = importlib.util.spec_from_file_location("generate_gitops_fixtures", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_fixture_is_what_the_operator_derives_now():
    """Each fixture is regenerated in memory from its scenario (the observed world through the operator's
    own derive_status) and must equal the file: if the operator changes what it says in any of these
    situations, the fixture (and the verdicts Argo CD and Flux reach on it) must be looked at again."""
    generator = _generator()
    wanted = generator.generate()
    on_disk = {p.name: p.read_text() for p in FIXTURES}
    drifted = sorted(name for name in wanted.keys() | on_disk.keys() if wanted.get(name) != on_disk.get(name))
    assert not drifted, (f"drifted from the operator (or missing, or made by no scenario): {', '.join(drifted)}; "
                         f"regenerate with `{generator.COMMAND}` and review the diff")


def test_the_generator_is_deterministic_and_its_check_mode_names_drift(tmp_path):
    generator = _generator()
    assert generator.generate() == generator.generate()
    for name, text in generator.generate().items():
        (tmp_path / name).write_text(text)
    assert generator.drifted(tmp_path) == []
    (tmp_path / "ready.yaml").write_text((tmp_path / "ready.yaml").read_text().replace("'True'", "'False'", 1))
    (tmp_path / "crash-loop.yaml").unlink()
    (tmp_path / "hand-written.yaml").write_text("{}")
    assert generator.drifted(tmp_path) == ["crash-loop.yaml", "hand-written.yaml", "ready.yaml"]


# --- rules the fixtures alone do not pin down -------------------------------------------------

def test_suspended_only_when_no_autoscaler_owns_the_replica_count():
    obj = load_fixture(ROOT / "tests" / "fixtures" / "gitops" / "scaled-to-zero.yaml")["object"]
    obj["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 4}
    assert argocd_health(obj) == ("Progressing", "ScaledToZero: replicas is 0: no pod serves the model")


def test_an_unobserved_generation_wins_over_a_stale_degraded_condition():
    obj = load_fixture(ROOT / "tests" / "fixtures" / "gitops" / "invalid-spec.yaml")["object"]
    obj["metadata"]["generation"] = 2  # the user fixed the spec; the operator has not looked yet
    assert argocd_health(obj) == ("Progressing", "Waiting for the operator to observe generation 2")
    assert kstatus(obj)[0] == "InProgress"


def test_without_metadata_generation():
    obj = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "m", "namespace": "n"}, "spec": {}}
    assert argocd_health(obj) == ("Progressing", "Waiting for the operator to report status")


_condition = st.fixed_dictionaries(
    {"type": st.sampled_from(list(CONDITION_TYPES) + ["Other"]),
     "status": st.sampled_from(["True", "False", "Unknown"])},
    optional={"reason": st.text(max_size=12), "message": st.text(max_size=30)})


@settings(max_examples=300, deadline=None)
@given(generation=st.none() | st.integers(1, 5), observed=st.none() | st.integers(0, 5),
       conditions=st.none() | st.lists(_condition, max_size=8), with_status=st.booleans(),
       replicas=st.none() | st.integers(0, 3), autoscaling=st.booleans())
def test_the_script_never_fails_and_follows_its_precedence(generation, observed, conditions, with_status,
                                                           replicas, autoscaling):
    obj: dict[str, Any] = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
                           "metadata": {"name": "m", "namespace": "n", "generation": generation}, "spec": {}}
    if replicas is not None:
        obj["spec"]["replicas"] = replicas
    if autoscaling:
        obj["spec"]["autoscaling"] = {"maxReplicas": 2}
    if with_status:
        obj["status"] = {"observedGeneration": observed, "conditions": copy.deepcopy(conditions)}
    status, _ = argocd_health(obj)

    def true(kind: str) -> bool:
        first = next((c for c in conditions or [] if c["type"] == kind), None)
        return first is not None and first["status"] == "True"

    if not with_status or observed is None or (generation is not None and observed < generation):
        assert status == "Progressing"
    elif true("Degraded"):
        assert status == "Degraded"
    elif true("Ready"):
        assert status == "Healthy"
    elif true("Progressing"):
        assert status == "Progressing"
    elif replicas == 0 and not autoscaling:
        assert status == "Suspended"
    else:
        assert status == "Progressing"


# --- installing it ----------------------------------------------------------------------------

def test_argocd_cm_patch_embeds_health_lua_byte_for_byte():
    patch = yaml.safe_load(CM_PATCH.read_text())
    assert (patch["apiVersion"], patch["kind"], patch["metadata"]["name"]) == ("v1", "ConfigMap", "argocd-cm")
    assert patch["data"][CM_KEY].encode() == HEALTH_LUA.read_bytes()
