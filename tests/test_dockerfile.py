"""No Docker engine runs here: the Dockerfile's invariants are checked on its text."""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import tomllib
from pathlib import Path

import yaml

from modeldeploy.cli import parser

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments and directives dropped."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends in a line continuation"
    out = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), " ".join(rest.split())))
    return out


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for step in instructions():
        if step[0] == "FROM":
            out.append([])
        assert out, "an instruction before the first FROM"
        out[-1].append(step)
    return out


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def run_commands(stage: list[tuple[str, str]]) -> list[str]:
    """The command of each RUN, without its --mount/--network flags."""
    out = []
    for keyword, args in stage:
        if keyword == "RUN":
            words = shlex.split(args)
            while words and words[0].startswith("--"):
                words.pop(0)
            out.append(" ".join(words))
    return out


def test_multi_stage_from_slim_python():
    froms = [stage[0][1] for stage in stages()]
    assert len(froms) == 2
    assert froms[0] == "python:3.11-slim AS build"
    assert froms[1] == "python:3.11-slim"  # the final stage: slim Python, nothing built on top but wheels


def test_the_builder_makes_wheels_of_the_project_and_its_runtime_dependencies():
    (wheel,) = [cmd for cmd in run_commands(stages()[0]) if cmd.startswith("pip wheel")]
    assert wheel.split()[-1] == "."  # built from this source tree, never fetched by name
    assert "--wheel-dir /wheels" in wheel


def test_the_final_stage_installs_only_the_built_wheels_offline():
    installs = [cmd for cmd in run_commands(final_stage()) if "pip install" in cmd]
    assert len(installs) == 1
    words = installs[0].split()
    assert "--no-index" in words and "--find-links=/wheels" in words
    assert words[-1] == "modeldeploy"  # no extras: never modeldeploy[test]
    (mount,) = [args for keyword, args in final_stage() if keyword == "RUN" and "pip install" in args]
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels" in mount


def test_the_test_extra_is_never_installed():
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    test_only = {requirement.split(">")[0].split("=")[0].split("[")[0].strip() for requirement in test_extra}
    text = " ".join(args for _, args in instructions())
    assert "[test]" not in text and "requirements" not in text
    for name in test_only:
        assert name not in text, name


def test_runs_as_a_numeric_non_root_user_created_before_it_after_every_install():
    stage = final_stage()
    users = [i for i, (keyword, _) in enumerate(stage) if keyword == "USER"]
    assert len(users) == 1, "exactly one USER in the final stage"
    uid, _, gid = stage[users[0]][1].partition(":")
    assert uid.isdigit() and int(uid) == 10001 and (not gid or gid == "10001")
    runs = [i for i, (keyword, _) in enumerate(stage) if keyword == "RUN"]
    assert runs and max(runs) < users[0], "a RUN after USER would run as the unprivileged user"
    (useradd,) = [cmd for cmd in run_commands(stage) if cmd.startswith("useradd")]
    assert f"--uid {uid}" in useradd and "--user-group" in useradd and "/usr/sbin/nologin" in useradd


def test_entrypoint_is_the_operator_in_exec_form():
    keyword, args = final_stage()[-1]
    assert keyword == "ENTRYPOINT"
    assert json.loads(args) == ["modeldeploy", "run"]
    assert not [k for k, _ in final_stage() if k in ("CMD", "SHELL", "HEALTHCHECK")]


def test_exposes_the_health_and_metrics_port_the_operator_and_chart_use():
    (exposed,) = [args for keyword, args in final_stage() if keyword == "EXPOSE"]
    run = parser().parse_args(["run"])
    values = yaml.safe_load((ROOT / "charts" / "modeldeploy" / "values.yaml").read_text())
    assert exposed == "8080" == str(run.health_port) == str(values["healthPort"])


def test_oci_labels_match_the_project():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    labels = dict(pair.split("=", 1) for keyword, args in final_stage() if keyword == "LABEL"
                  for pair in shlex.split(args))
    assert labels["org.opencontainers.image.title"] == project["name"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.description"]


def test_nothing_is_fetched_outside_pip():
    text = " ".join(args for _, args in instructions()).lower()
    assert not any(word in text for word in ("curl", "wget", "apt-get", "http://", ":latest"))
    assert "ADD" not in {keyword for keyword, _ in instructions()}


# --- the build context ---------------------------------------------------------------------

def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for these patterns: the last matching line decides, `!` re-includes,
    and a pattern that matches a directory matches everything under it."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        exclude = not pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, glob) or (glob.startswith("**/") and fnmatch.fnmatchcase(c, glob[3:]))
               for c in candidates):
            ignored = exclude
    return ignored


def _context_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    extra = [str(p.relative_to(ROOT)) for p in ROOT.glob("operator/**/*") if p.is_file()]
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return {path for path in set(listed) | set(extra) if not _ignored(path, patterns)}


def test_the_build_context_is_the_package_source_only():
    sent = _context_files()
    assert {"pyproject.toml", "README.md", "operator/modeldeploy/__init__.py"} <= sent
    assert {path.split("/")[0] for path in sent} == {"pyproject.toml", "README.md", "operator"}
    assert not [p for p in sent if "__pycache__" in p or ".egg-info" in p or p.endswith(".pyc")]


def test_every_copy_source_is_in_the_build_context():
    sent = _context_files()
    for keyword, args in instructions():
        if keyword == "COPY" and "--from" not in args:
            *sources, _ = args.split()
            for source in sources:
                assert source in sent or any(p.startswith(source.rstrip("/") + "/") for p in sent), source
