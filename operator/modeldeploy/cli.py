"""The `modeldeploy` command: render (offline), crd, run (the operator)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from modeldeploy import API_VERSION, KIND, __version__
from modeldeploy.errors import InvalidSpec, parse_model_deployment


class InputError(Exception):
    pass


def _documents(text: str, source: str) -> Iterator[Any]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{source}: not valid JSON: {error}") from None
        items = data.get("items", []) if isinstance(data, dict) and data.get("kind") == "List" else (
            data if isinstance(data, list) else [data])
        yield from items
        return
    try:
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if isinstance(doc, dict) and doc.get("kind") == "List":
                yield from doc.get("items") or []
            else:
                yield doc
    except yaml.YAMLError as error:
        raise InputError(f"{source}: not valid YAML: {error}") from None


def _read(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except OSError as error:
        raise InputError(f"{path}: {error.strerror or error}") from None


def render_documents(text: str, source: str) -> list[dict[str, Any]]:
    """Every child of every ModelDeployment in text; raises InputError naming each bad field."""
    from modeldeploy.render import render_manifests

    manifests: list[dict[str, Any]] = []
    problems: list[str] = []
    found = 0
    for index, doc in enumerate(_documents(text, source), start=1):
        if not (isinstance(doc, dict) and doc.get("kind") == KIND):
            continue
        found += 1
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        label = f"{source}: document {index} ({KIND} {meta.get('namespace', 'default')}/{meta.get('name', '?')})"
        if doc.get("apiVersion") != API_VERSION:
            problems.append(f"{label}: apiVersion: must be {API_VERSION} (got {doc.get('apiVersion')!r})")
            continue
        try:
            manifests.extend(render_manifests(parse_model_deployment(doc)))
        except InvalidSpec as error:
            problems.extend(f"{label}: {problem}" for problem in error.problems)
    if problems:
        raise InputError("\n".join(problems))
    if not found:
        raise InputError(f"{source}: no {KIND} found")
    return manifests


def dump(manifests: list[dict[str, Any]], output: str) -> str:
    if output == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}, indent=2) + "\n"
    return "".join("---\n" + yaml.safe_dump(m, sort_keys=False, default_flow_style=False) for m in manifests)


def _cmd_render(args: argparse.Namespace) -> int:
    manifests: list[dict[str, Any]] = []
    for path in args.filename:
        manifests.extend(render_documents(*_read(path)))
    sys.stdout.write(dump(manifests, args.output))
    return 0


def _cmd_crd(args: argparse.Namespace) -> int:
    from modeldeploy.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def lease_config(args: argparse.Namespace, environ: dict[str, str]) -> Any:
    """The Lease to elect a leader on, or None (leader election off).

    Default: on when POD_NAMESPACE is set (the Helm chart sets it from the downward API, and passes
    --leader-election anyway), off otherwise, so `modeldeploy run` from a laptop reconciles at once
    with no Lease and no RBAC for one. The Lease lives in --lease-namespace, else POD_NAMESPACE.
    """
    from modeldeploy.operator import LeaseConfig

    namespace = args.lease_namespace or environ.get("POD_NAMESPACE", "")
    enabled = args.leader_election if args.leader_election is not None else bool(environ.get("POD_NAMESPACE"))
    if not enabled:
        return None
    if not namespace:
        raise InputError("--leader-election needs the Lease's namespace: --lease-namespace, or POD_NAMESPACE "
                         "(the downward API's metadata.namespace)")
    return LeaseConfig(namespace=namespace, name=args.lease_name)


def _cmd_run(args: argparse.Namespace) -> int:
    import os

    from modeldeploy.kube import NoClusterConfig
    from modeldeploy.operator import run

    lease = lease_config(args, dict(os.environ))
    try:
        return run(namespaces=args.namespace, health_port=args.health_port, verbose=args.verbose, lease=lease)
    except NoClusterConfig as error:
        raise InputError(str(error)) from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="modeldeploy", description=(
        "Serve models on Kubernetes with NVIDIA Triton Inference Server."))
    top.add_argument("--version", action="version", version=f"modeldeploy {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="print the objects the operator would create, offline",
                            description="Print every child of each ModelDeployment in the files. Needs no cluster.")
    render.add_argument("-f", "--filename", action="append", required=True,
                        help="YAML or JSON file with one or more ModelDeployments ('-' for stdin); repeatable")
    render.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    render.set_defaults(func=_cmd_render)

    crd = sub.add_parser("crd", help="print the ModelDeployment CustomResourceDefinition")
    crd.set_defaults(func=_cmd_crd)

    run = sub.add_parser("run", help="run the operator against the cluster in KUBECONFIG (or in-cluster)")
    run.add_argument("-n", "--namespace", action="append", default=[],
                     help="watch only this namespace (repeatable); default: all namespaces")
    run.add_argument("--health-port", type=int, default=8080,
                     help="port for /healthz and /metrics (0 disables)")
    run.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=None,
                     help="reconcile only while holding a coordination.k8s.io/v1 Lease, so replicas can run "
                          "side by side (default: on when POD_NAMESPACE is set, i.e. in the chart's pod; "
                          "off otherwise)")
    run.add_argument("--lease-name", default="modeldeploy-operator",
                     help="the Lease's name (the chart passes its release's full name)")
    run.add_argument("--lease-namespace", default="",
                     help="the Lease's namespace (default: POD_NAMESPACE)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_cmd_run)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InputError as error:
        print(f"modeldeploy: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
