"""requirements/constraints.txt, the pinned versions scripts/setup installs from: every
dependency sgpo declares is pinned, and the environment the tests run in is the pinned one (a
package upgraded by hand, or a new dependency, shows here until scripts/lock is run on purpose)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[;\s]", req, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements/constraints.txt: {line!r} is not NAME==VERSION"
            pins[_name(name)] = version.strip()
    return pins


def test_every_declared_dependency_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    missing = [r for r in declared if _name(r) not in _pins()]
    assert not missing, f"not in requirements/constraints.txt (run scripts/lock): {missing}"
    assert _pins()["torch"] == "2.13.0"  # no local build tag: CPU and CUDA builds share the pin


def test_the_installed_versions_are_the_pinned_ones():
    wrong = []
    for name, version in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an optional package this environment lacks
        if installed.split("+")[0] != version:
            wrong.append(f"{name} {installed} (pinned {version})")
    assert not wrong, f"installed versions differ from requirements/constraints.txt: {wrong}"
