"""The Helm chart installed into the real API server: the ServiceAccount may do exactly what the
operator's code does (modeldeploy.permissions), checked with `kubectl auth can-i`."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.conftest import kubectl
from modeldeploy import permissions
from tests.support.tools import helm_path

CHART = Path(__file__).resolve().parents[1] / "charts" / "modeldeploy"
ALL_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


def _helm() -> str:
    found = helm_path()
    if found is None:
        pytest.skip("helm is not installed (make test installs it)")
    return found


def helm(*args: str) -> None:
    result = subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr


def can_i(account: str, verb: str, permission: permissions.Permission | str, namespace: str | None) -> bool:
    """`kubectl auth can-i` as the account; a Permission names its resource and subresource."""
    if isinstance(permission, str):
        target = [permission]
    else:
        plural, _, sub = permission.resource.partition("/")
        target = [f"{plural}.{permission.api_group}" if permission.api_group else plural]
        target += [f"--subresource={sub}"] if sub else []
    where = ["-n", namespace] if namespace else []
    result = kubectl("auth", "can-i", verb, *target, f"--as={account}", *where, check=False)
    return result.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def installed(crd_installed: None) -> Iterator[tuple[str, str, str]]:
    """A namespaced-mode release serving one namespace: (release namespace, watched namespace, account)."""
    suffix = uuid.uuid4().hex[:6]
    home, watched = f"md-chart-{suffix}", f"md-watched-{suffix}"
    kubectl("create", "namespace", home)
    kubectl("create", "namespace", watched)
    release = f"md{suffix}"
    helm("install", release, str(CHART), "-n", home, "--skip-crds", "--set", "rbac.scope=namespaced",
         "--set", f"watchNamespaces={{{watched}}}", "--set", "rbac.aggregateToDefaultRoles=false")
    try:
        yield home, watched, f"system:serviceaccount:{home}:{release}-modeldeploy"
    finally:
        helm("uninstall", release, "-n", home)
        kubectl("delete", "namespace", home, watched, "--wait=false", check=False)


def test_the_operator_may_do_everything_its_code_does(installed):
    home, watched, account = installed
    missing = [f"{verb} {p.resource}" for p in permissions.NAMESPACED for verb in sorted(p.verbs)
               if not can_i(account, verb, p, watched)]
    missing += [f"{verb} {p.resource} (cluster)" for p in permissions.CLUSTER for verb in sorted(p.verbs)
                if not can_i(account, verb, p, None)]
    assert missing == []


def test_and_nothing_else(installed):
    home, watched, account = installed
    extra = [f"{verb} {p.resource}" for p in permissions.NAMESPACED for verb in ALL_VERBS
             if verb not in p.verbs and can_i(account, verb, p, watched)]
    # Nothing in a namespace it does not serve, no Secret beyond `get`, no namespaces.
    if can_i(account, "get", "deployments.apps", home):
        extra.append(f"get deployments in {home}, which it does not serve")
    extra += [f"{verb} secrets" for verb in ("list", "watch") if can_i(account, verb, "secrets", watched)]
    if can_i(account, "list", "namespaces", None):
        extra.append("list namespaces (kopf needs them only for namespace patterns)")
    assert extra == []
