"""The docs name things that exist: every `sgpo.x.y` name in README.md and docs/*.md resolves
to a module or an attribute, every config key they cite exists, no doc points outside the
repository, and the README's layout table lists exactly the top-level parts of the package."""

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from sgpo.trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _resolve(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_code_exists(doc):
    names = set(re.findall(r"`(sgpo(?:\.\w+)+)", doc.read_text()))
    missing = sorted(n for n in names if not _resolve(n))
    assert not missing, f"{doc.name} names {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_cited_config_keys_exist(doc):
    sections = {f.name: {g.name for g in dataclasses.fields(f.default_factory)} for f in dataclasses.fields(TrainConfig)}
    keys = set(re.findall(r"`(" + "|".join(sections) + r")\.(\w+)", doc.read_text()))
    missing = sorted(f"{s}.{k}" for s, k in keys if k not in sections[s])
    assert not missing, f"{doc.name} cites {missing}"


def test_nothing_points_outside_the_repository():
    """Code, configs and docs are read without the project's private notes: no "spec section
    N", no spec file, no ../shared paths (tests may read ../shared/data)."""
    files = DOCS + sorted((REPO / "sgpo").rglob("*.py")) + sorted((REPO / "configs").glob("*.yaml"))
    bad = [str(f.relative_to(REPO)) for f in files
           if re.search(r"spec(ification)? (section|\d)|sgpo-spec|\.\./shared|shared/docs", f.read_text(), re.I)]
    assert not bad, bad


def test_readme_layout_table_matches_the_package():
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Layout"):]
    listed = set(re.findall(r"^\| `(sgpo(?:\.\w+)?)`", table, re.M))
    package = REPO / "sgpo"
    present = {f"sgpo.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    present |= {f"sgpo.{p.name}" for p in package.iterdir() if (p / "__init__.py").exists()}
    assert listed == present, (sorted(present - listed), sorted(listed - present))
