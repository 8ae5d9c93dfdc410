"""GitOps health: the Argo CD Lua check (run in a real Lua, via lupa) and Flux's kstatus reading,
on statuses the operator itself wrote (reconciler + fake cluster + real Triton)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import LuaRuntime

from modeldeploy.kube import MODEL_DEPLOYMENT
from modeldeploy.reconciler import Reconciler
from modeldeploy.triton import ReportCache, TritonProbe
from tests.support.deployment_controller import rolling, settle
from tests.support.fake_cluster import FakeCluster
from tests.test_reconciler import NS, md_object

ROOT = Path(__file__).resolve().parents[1]
HEALTH_LUA = ROOT / "deploy" / "argocd" / "health.lua"
pytestmark = pytest.mark.triton


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """Run health.lua as Argo CD does: the object in the global `obj`, a table returned."""
    lua = LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items() if v is not None})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    result = lua.execute(HEALTH_LUA.read_text())
    return result["status"], result["message"]


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus's rules for a kind without built-in rules (sigs.k8s.io/cli-utils pkg/kstatus/status):
    deletion → Terminating; observedGeneration present and != generation → InProgress;
    Reconciling=True → InProgress; Stalled=True → Failed; otherwise Current."""
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    if meta.get("generation") is not None and status.get("observedGeneration") is not None \
            and status["observedGeneration"] != meta["generation"]:
        return "InProgress"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Reconciling" and cond.get("status") == "True":
            return "InProgress"
        if cond.get("type") == "Stalled" and cond.get("status") == "True":
            return "Failed"
    return "Current"


@pytest.fixture()
async def world(tritonserver):
    fake = FakeCluster()
    probe = TritonProbe(timeout_seconds=2.0)
    yield fake, Reconciler(fake, ReportCache(probe), triton_port=tritonserver.http_port)
    await probe.close()


SIMPLE_V2 = {"name": "simple", "repository": "s3://models/triton", "version": "2"}


async def _scenario(name: str, fake: FakeCluster, reconciler: Reconciler) -> dict[str, Any]:
    async def run(**pods):
        await reconciler.reconcile(NS, "m")
        settle(fake, NS, "m", **pods)
        await reconciler.reconcile(NS, "m")

    if name == "ready":
        fake.create(md_object("m"))
        await run()
    elif name == "rolling":
        fake.create(md_object("m", replicas=2))
        await run()
        fake.update_spec(MODEL_DEPLOYMENT, NS, "m", {"model": SIMPLE_V2})
        await reconciler.reconcile(NS, "m")
        rolling(fake, NS, "m", updated=1, ready=False)
        await reconciler.reconcile(NS, "m")
    elif name == "unobserved":
        fake.create(md_object("m"))
        await run()
        fake.update_spec(MODEL_DEPLOYMENT, NS, "m", {"replicas": 3})  # the operator has not seen it yet
    elif name == "invalid":
        fake.create(md_object("m", resources={"gpu": 1, "mig": "1g.10gb"}))
        await reconciler.reconcile(NS, "m")
    elif name == "secret-missing":
        fake.create(md_object("m", model={**SIMPLE_V2, "credentialsSecret": "absent"}))
        await reconciler.reconcile(NS, "m")
    elif name == "load-failed":
        fake.create(md_object("m", model={"name": "broken", "repository": "s3://m/t", "version": "1"}))
        await run()
    elif name == "unschedulable":
        fake.create(md_object("m", resources={"gpu": 8}))
        await run(unschedulable_message="0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    elif name == "scaled-to-zero":
        fake.create(md_object("m", replicas=0))
        await run()
    elif name == "rolled-back":
        fake.create(md_object("m"))
        await run()
        fake.update_spec(MODEL_DEPLOYMENT, NS, "m", {"model": {**SIMPLE_V2, "version": "7"}})
        await reconciler.reconcile(NS, "m")
        rolling(fake, NS, "m", updated=1, ready=False)
        await reconciler.reconcile(NS, "m")
        await reconciler.reconcile(NS, "m")
        settle(fake, NS, "m")
        await reconciler.reconcile(NS, "m")
    return fake.get_now(MODEL_DEPLOYMENT, NS, "m")


@pytest.mark.parametrize(("scenario", "argocd", "flux", "message"), [
    ("ready", "Healthy", "Current", "simple version 1 serves on 1/1 pods"),
    ("rolling", "Progressing", "InProgress", "RollingUpdate"),
    ("unobserved", "Progressing", "InProgress", "Waiting for the operator to observe generation 2"),
    ("invalid", "Degraded", "Failed", "InvalidSpec: "),
    ("secret-missing", "Degraded", "Failed", "SecretNotFound: spec.model.credentialsSecret"),
    ("load-failed", "Degraded", "Failed", "weights file missing"),
    ("unschedulable", "Degraded", "InProgress", "Insufficient nvidia.com/gpu"),
    ("scaled-to-zero", "Suspended", "Current", "Scaled to zero replicas"),
    ("rolled-back", "Degraded", "Failed", "RolledBack: version 7 failed and was rolled back to 1"),
])
async def test_health_of_real_statuses(world, scenario, argocd, flux, message):
    obj = await _scenario(scenario, *world)
    status, text = argocd_health(obj)
    assert (status, kstatus(obj)) == (argocd, flux), (text, obj.get("status", {}).get("conditions"))
    assert message in text


def test_before_the_operator_has_written_status():
    obj = md_object("m")
    obj["metadata"]["generation"] = 1
    assert argocd_health(obj) == ("Progressing", "Waiting for the modeldeploy operator to report status")
    # kstatus has no observedGeneration to compare yet and calls such an object Current.
    assert kstatus(obj) == "Current"


def test_argocd_cm_patch_embeds_the_script_byte_for_byte():
    patch = yaml.safe_load((ROOT / "deploy" / "argocd" / "argocd-cm-patch.yaml").read_text())
    key = "resource.customizations.health.modeldeploy.dev_ModelDeployment"
    assert patch["data"][key] == HEALTH_LUA.read_text()
