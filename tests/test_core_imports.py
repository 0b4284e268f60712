"""Layering: the core imports only torch and the standard library (checked in a fresh
interpreter), and every module of every subpackage imports only lower layers (LAYERS)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "sgpo" / "core"


@pytest.mark.slow
def test_core_does_not_import_heavy_packages():
    code = ("import sys, sgpo.core\n"
            "heavy = ('transformers', 'trl', 'accelerate', 'vllm', 'datasets', 'httpx')\n"
            "bad = [m for m in heavy if m in sys.modules]\n"
            "print(bad)\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CORE.parents[1])
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_sources_import_only_torch_stdlib_and_core():
    allowed_roots = {"torch", "sgpo"} | set(sys.stdlib_module_names)
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in allowed_roots, f"{path.name} imports {name}"
                assert not name.startswith("sgpo.") or name.startswith("sgpo.core"), f"{path.name} imports {name}"


# Layers, lowest first: a module imports only lower layers and its own unit (a top-level
# module or a subpackage). The CLI is the top; the demo drives the trainer and evaluation. The
# strategy world is a testbed above the library it measures with (evaluation) and below the
# trainer, which imports it so its model alias is registered with sgpo.models.
LAYERS = [
    {"sgpo.core", "sgpo.errors"},
    {"sgpo.locks"},
    {"sgpo.cache"},
    {"sgpo.io", "sgpo.schema", "sgpo.prompts", "sgpo.compat", "sgpo.models", "sgpo.lora"},
    {"sgpo.testing"},  # test doubles (loopback chat server, tiny models): only tests and scripts import it
    {"sgpo.rewards", "sgpo.data", "sgpo.generation"},
    {"sgpo.strategies", "sgpo.evaluation"},
    {"sgpo.world", "sgpo.arithmetic"},  # the testbeds
    {"sgpo.trainer"},
    {"sgpo.demo"},
    {"sgpo.cli"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _sgpo_imports(path: Path) -> list[str]:
    """Every sgpo module ``path`` imports, at module level or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [f"{node.module}.{a.name}" for a in node.names] if node.module == "sgpo" else [node.module]
    return [m for m in out if m == "sgpo" or m.startswith("sgpo.")]


def _modules():
    package = CORE.parent
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def test_every_module_has_a_layer():
    missing = {_unit(m) for m, _ in _modules()} - set(LAYER) - {"sgpo"}
    assert not missing, f"add {missing} to LAYERS"


def test_dependencies_point_down():
    bad = []
    for module, path in _modules():
        src = _unit(module)
        for target in _sgpo_imports(path):
            dst = _unit(target)
            if dst == src:
                continue
            if dst == "sgpo" or LAYER[dst] >= LAYER.get(src, len(LAYERS)):
                bad.append(f"{module} imports {target}")
    assert not bad, "\n".join(bad)


def test_nothing_imports_a_cli_module():
    """Subcommands are found by name (sgpo.cli.SUBCOMMANDS) and imported with importlib."""
    bad = [f"{module} imports {t}" for module, path in _modules() for t in _sgpo_imports(path)
           if (t == "sgpo.cli" or t.endswith(".cli")) and module != t]
    assert not bad, bad


def test_no_library_module_imports_sgpo_by_a_string():
    """Library modules import each other by import statements (the edges above see them): no
    "sgpo.x:function" or importlib.import_module("sgpo...") string. The CLI alone finds its
    subcommands by name (test_nothing_imports_a_cli_module)."""
    import re

    bad = []
    for module, path in _modules():
        if module == "sgpo.cli":
            continue
        text = path.read_text()
        for m in re.finditer(r"""import_module\(\s*f?["'](sgpo[\w.]*)|["'](sgpo\.[\w.]+):\w+["']""", text):
            target = m.group(1) or m.group(2)
            if _unit(target) != _unit(module):  # a default naming the module's own function is a value
                bad.append(f"{module}: {m.group(0)}")
    assert not bad, bad


def test_the_world_registers_its_model_with_the_loader_for_the_trainer_and_the_cli():
    import sgpo.trainer.trainer  # noqa: F401
    from sgpo.models import BUILT_MODELS

    assert "strategy-world" in BUILT_MODELS
    assert "sgpo.world" in _sgpo_imports(CORE.parent / "trainer" / "trainer.py")
    assert "sgpo.world" in _sgpo_imports(CORE.parent / "cli.py")


def test_the_library_never_imports_its_test_doubles():
    bad = [f"{module} imports {t}" for module, path in _modules() for t in _sgpo_imports(path)
           if t.startswith("sgpo.testing") and module != "sgpo.testing"]
    assert not bad, bad
