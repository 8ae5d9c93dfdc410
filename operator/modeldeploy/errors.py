"""Turn validation failures into messages that name the field and what was wrong."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from modeldeploy.api import ModelDeployment


class InvalidSpec(ValueError):
    """A ModelDeployment that cannot be served as written. `problems` are 'field.path: what is wrong'."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str", "function-after[_check_rules()]") or "[" in str(part):
            continue  # union-branch and validator names pydantic adds to locations
        else:
            out += f".{part}" if out else str(part)
    return out


def describe(error: ValidationError) -> list[str]:
    problems: list[str] = []
    for item in error.errors(include_url=False):
        path = _path(tuple(item["loc"]))
        message = item["msg"]
        if item["type"] == "missing":
            message = "is required"
        elif item["type"] == "extra_forbidden":
            message = "is not a field of ModelDeployment (check the spelling; fields are camelCase)"
        elif item["type"] == "literal_error":
            message = f"{item['msg'].replace('Input should be', 'must be')} (got {item['input']!r})"
        entry = f"{path}: {message}" if path else message
        if entry not in problems:
            problems.append(entry)
    return problems


def parse_model_deployment(obj: Any) -> ModelDeployment:
    """Validate one object; raises InvalidSpec with field paths, never another exception type."""
    if not isinstance(obj, dict):
        raise InvalidSpec([f"expected a ModelDeployment object, got {type(obj).__name__}"])
    try:
        return ModelDeployment.model_validate(obj)
    except ValidationError as error:
        raise InvalidSpec(describe(error)) from None
    except (TypeError, ValueError) as error:  # e.g. a rule's check meeting a type it did not expect
        raise InvalidSpec([str(error)]) from None
