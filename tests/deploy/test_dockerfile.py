"""deploy/Dockerfile's invariants (no Docker engine here to build it): pinned slim base, two
stages, nothing built or installed in the final one, a numeric non-root user, HOST=0.0.0.0, and
the console script as the entrypoint."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        logical.append(pending + line.strip())
        pending = ""
    parsed = []
    for line in logical:
        name, _, args = line.strip().partition(" ")
        parsed.append((name.upper(), args.strip()))
    return parsed


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with `${ARG}` in FROM resolved."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for name, rest in instructions(text):
        if name == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif name == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], words[0])
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=alias))
        else:
            stages[-1].instructions.append((name, rest))
    return args, stages


def env(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in stage.all("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            values[key] = value
    return values


def test_the_dockerfile_parser_reads_continuations_and_stages() -> None:
    args, stages = parse(
        "ARG IMG=python:3.11.14-slim\nFROM ${IMG} AS build\n# c\nRUN a \\\n  # inner\n  && b\n"
        "FROM $IMG\nUSER 1:1\n"
    )
    assert args == {"IMG": "python:3.11.14-slim"}
    assert [(s.base, s.name) for s in stages] == [
        ("python:3.11.14-slim", "build"),
        ("python:3.11.14-slim", None),
    ]
    assert stages[0].all("RUN") == ["a && b"]


def test_every_stage_starts_from_the_same_pinned_slim_python() -> None:
    _, stages = parse(DOCKERFILE.read_text())
    assert len(stages) >= 2
    bases = {stage.base for stage in stages}
    assert len(bases) == 1  # the virtualenv copied between stages needs the same Python
    (base,) = bases
    pinned = re.fullmatch(
        r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?|python@sha256:[0-9a-f]{64}",
        base,
    )
    assert pinned, base


def test_the_final_stage_only_copies_the_built_virtualenv() -> None:
    _, stages = parse(DOCKERFILE.read_text())
    final = stages[-1]
    builders = {stage.name for stage in stages[:-1]}
    for copy in final.all("COPY"):
        assert re.match(r"--from=(\S+) ", copy) and copy.split()[0][len("--from=") :] in builders
    for command in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apt|apk)\s+(install|add)\b", command), command
        assert not re.search(r"\bpip\s+install\b", command), command
        assert not re.search(r"\b(gcc|make|build-essential)\b", command), command
    assert not final.all("ADD")


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    _, stages = parse(DOCKERFILE.read_text())
    final = stages[-1]
    user = final.all("USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, user  # runAsNonRoot can only verify a number
    assert gid.isdigit() and int(gid) > 0, user


def test_the_entrypoint_is_the_console_script_listening_on_all_interfaces() -> None:
    _, stages = parse(DOCKERFILE.read_text())
    final = stages[-1]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["convoai-ledger"]
    assert scripts["convoai-ledger"] == "service.cli:main"
    assert json.loads(final.all("CMD")[-1]) == ["serve"]
    variables = env(final)
    assert (variables["HOST"], variables["PORT"]) == ("0.0.0.0", "8000")
    assert variables["PATH"].startswith("/opt/venv/bin:")
    assert final.all("EXPOSE") == ["8000"]


def test_the_build_context_leaves_out_local_state() -> None:
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"  # everything is out unless let in below
    assert {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")} == {
        "pyproject.toml",
        "README.md",
        "service",
        "migrations",
    }
    _, stages = parse(DOCKERFILE.read_text())
    sources = {
        word.rstrip("/").removeprefix("./")
        for copy in stages[0].all("COPY")
        for word in copy.split()[:-1]
    }
    assert sources == {"pyproject.toml", "README.md", "service", "migrations"}
