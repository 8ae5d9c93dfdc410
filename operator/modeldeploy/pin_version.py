"""Pin a model repository to one version of one model, in the pod, before Triton starts.

Triton loads the versions the model's own `version_policy` names (by default only the latest), and
has no flag to load another; a config override at load time replaces the whole config (measured:
inputs and outputs are lost). So each pod builds its own view of the repository, where Triton can
see one version only and the config asks for exactly it:

    <dest>/<model>/config.pbtxt   the model's config with version_policy: specific [<version>]
    <dest>/<model>/<version>      a link to the repository's version directory
    <dest>/<model>/<other files>  links (labels, configs/, …); the other versions are left out
    <dest>/<other models>         links, so an ensemble's parts load as before

A version that is not in the repository is not pinned (see build_view), so Triton can say so.

The view holds links, not copies, so it costs nothing for large weights. It runs as an init
container with the Triton image's python3, so a pod becomes Ready without the operator (an HPA
scale-up while the operator is down still serves), and each pod serves the version its own
template names, old pods included, during a rollout.

This file is the init container's whole program (the renderer embeds its text): standard library
only, nothing from the rest of the package.

    python3 pin_version.py SOURCE_REPOSITORY MODEL VERSION DEST
"""

from __future__ import annotations

import os
import shutil
import sys

VERSION_POLICY = "version_policy"
_IDENTIFIER = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_CLOSING = {"{": "}", "<": ">", "[": "]"}


def _string_end(text: str, start: int) -> int:
    """Index just past the quoted string that starts at `start` (backslash escapes honoured)."""
    quote, i = text[start], start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    return len(text)


def _skip_blank(text: str, i: int) -> int:
    while i < len(text):
        if text[i].isspace():
            i += 1
        elif text[i] == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        else:
            return i
    return i


def _value_end(text: str, i: int) -> int:
    """Index just past the message value ({...} or <...>) that starts at i."""
    stack = [_CLOSING[text[i]]]
    i += 1
    while i < len(text) and stack:
        c = text[i]
        if c in "\"'":
            i = _string_end(text, i)
            continue
        if c == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if c in _CLOSING:
            stack.append(_CLOSING[c])
        elif c == stack[-1]:
            stack.pop()
        i += 1
    if stack:
        raise ValueError(f"unbalanced {VERSION_POLICY} value in config.pbtxt")
    return i


def without_top_level_field(config: str, field: str) -> str:
    """The protobuf text-format `config` without its top-level `field` entries (message values)."""
    out: list[str] = []
    i, depth, copied_from = 0, 0, 0
    while i < len(config):
        c = config[i]
        if c in "\"'":
            i = _string_end(config, i)
        elif c == "#":
            end = config.find("\n", i)
            i = len(config) if end < 0 else end
        elif c in _CLOSING:
            depth += 1
            i += 1
        elif c in _CLOSING.values():
            depth -= 1
            i += 1
        elif (depth == 0 and config.startswith(field, i) and (i == 0 or config[i - 1] not in _IDENTIFIER)
              and config[i + len(field):i + len(field) + 1] not in _IDENTIFIER):
            j = _skip_blank(config, i + len(field))
            if config[j:j + 1] == ":":
                j = _skip_blank(config, j + 1)
            if config[j:j + 1] not in ("{", "<"):
                raise ValueError(f"{field} in config.pbtxt is not a message")
            out.append(config[copied_from:i])
            i = copied_from = _value_end(config, j)
        else:
            i += 1
    out.append(config[copied_from:])
    return "".join(out)


def pinned_config(config: str, version: str) -> str:
    """The model config with version_policy replaced by exactly `version`."""
    kept = without_top_level_field(config, VERSION_POLICY).rstrip()
    policy = f"{VERSION_POLICY}: {{ specific: {{ versions: [ {int(version)} ] }} }}"
    note = "# version_policy set by modeldeploy: this pod serves exactly this version"
    return f"{kept}\n{note}\n{policy}\n" if kept else f"{note}\n{policy}\n"


def build_view(source: str, model: str, version: str, dest: str) -> list[str]:
    """Make dest the pinned view of the repository at source; returns what it did, for the log."""
    if os.path.isdir(dest):  # a restarted pod: start over, the view is ours
        for entry in os.listdir(dest):
            path = os.path.join(dest, entry)
            if os.path.islink(path) or not os.path.isdir(path):
                os.remove(path)
            else:
                shutil.rmtree(path)
    os.makedirs(dest, exist_ok=True)
    model_source = os.path.join(source, model)
    for entry in sorted(os.listdir(source)):
        if entry != model:
            os.symlink(os.path.join(source, entry), os.path.join(dest, entry))
    if not os.path.isdir(model_source):
        # Triton starts anyway and reports the model missing; the operator shows its reason.
        return [f"model {model} is not in the repository {source}: nothing to pin"]
    model_dest = os.path.join(dest, model)
    if not os.path.isdir(os.path.join(model_source, version)):
        # Pinned to an absent version, Triton would refuse the config before listing the model at
        # all. As it is, Triton loads what the repository's policy names and lists it, so the
        # operator can say "version 9 is not loaded (loaded: 2)"; the readiness probe asks for
        # the pinned version, so this pod gets no traffic either way.
        os.symlink(model_source, model_dest)
        return [f"version {version} of {model} is not in the repository {source}: left as it is, for Triton "
                "to report"]
    os.makedirs(model_dest)
    said = []
    for entry in sorted(os.listdir(model_source)):
        path = os.path.join(model_source, entry)
        if entry == "config.pbtxt" or (entry.isdigit() and os.path.isdir(path) and entry != version):
            continue
        os.symlink(path, os.path.join(model_dest, entry))
    config_path = os.path.join(model_source, "config.pbtxt")
    config = ""
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = f.read()
    with open(os.path.join(model_dest, "config.pbtxt"), "w", encoding="utf-8") as f:
        f.write(pinned_config(config, version))
    said.append(f"pinned {model} to version {version} in {dest} (from {source})")
    return said


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    _, source, model, version, dest = argv
    try:
        for line in build_view(source, model, version, dest):
            print(f"modeldeploy: {line}")
    except (OSError, ValueError) as error:
        # Triton will then fail to load the model and say why; the reason is here, in the log.
        print(f"modeldeploy: cannot pin {model} to version {version}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
