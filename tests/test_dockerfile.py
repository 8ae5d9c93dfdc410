"""No Docker engine runs here: the Dockerfile's invariants are checked as text."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_multi_stage_with_a_slim_python_final_stage():
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert len(froms) == 2
    assert final_stage()[0][1].startswith("python:3.11-slim")


def test_runs_as_a_numeric_non_root_user_after_every_install():
    stage = final_stage()
    users = [i for i, (keyword, _) in enumerate(stage) if keyword == "USER"]
    assert users, "no USER in the final stage"
    uid = stage[users[-1]][1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    runs = [i for i, (keyword, _) in enumerate(stage) if keyword == "RUN"]
    assert max(runs) < users[-1]


def test_entrypoint_is_the_operator():
    assert final_stage()[-1] == ("ENTRYPOINT", '["modeldeploy", "run"]')


def test_only_runtime_dependencies_are_installed():
    text = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert "[test]" not in text and "pytest" not in text
    assert "--no-index" in text  # the final stage installs only the wheels built in the first


def test_the_build_context_leaves_tests_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"tests", "e2e", ".git", ".venv"} <= set(ignored)
