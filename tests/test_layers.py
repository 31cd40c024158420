"""Data flows one way: no module imports a module of a higher layer (function-local imports included).

data -> text/encoders -> models -> training/stages -> pipeline folder -> pipelines -> CLI/serve/eval.
A new top-level module must be given a layer here, so the table stays the map of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dalle2"

#: layer of each top-level module or package of dalle2 (lower may not import higher)
LAYERS = {
    # the ground: no dalle2 imports beyond this layer
    "errors": 0,
    "presets": 0,
    "coerce": 0,
    "folder_format": 0,
    # data and text
    "data": 1,
    "text": 1,
    "text_input": 1,
    "grid": 1,
    # networks, their losses and the diffusion maths
    "diffusion": 2,
    "models": 2,
    # training
    "config": 3,
    "training": 3,
    "stages": 4,
    # the saved pipeline folder
    "pipeline": 5,
    "export": 5,
    "pipeline_base": 5,
    # the pipelines
    "unclip_pipeline": 6,
    "gan_pipeline": 6,
    # what users run
    "eval": 7,
    "train_all": 7,
    "serve": 7,
    "cli": 7,
    "cli_options": 7,
    "generate_cli": 7,
    "serve_cli": 7,
    "train_all_cli": 7,
    "__main__": 7,
    "__init__": 7,
}
CLI_LAYER = 7


def _layer(relative: Path) -> int:
    """A module's layer; a ``*_cli`` module inside a package is command-line glue (the top layer)."""
    if relative.stem.endswith("_cli"):
        return CLI_LAYER
    return LAYERS[relative.parts[0] if len(relative.parts) > 1 else relative.stem]


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "dalle2" and "." in name]


MODULES = sorted(p.relative_to(SRC) for p in SRC.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = sorted({str(p) for p in MODULES if (p.parts[0] if len(p.parts) > 1 else p.stem) not in LAYERS})
    assert not missing, f"give these a layer in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("relative", MODULES, ids=str)
def test_imports_run_downward(relative):
    mine = _layer(relative)
    wrong = []
    for line, name in _imports(SRC / relative):
        target = name.split(".")[1]
        if target not in LAYERS:
            continue  # a name imported from the package root (``from dalle2 import x``) is not a module
        module = SRC / target
        target_path = Path(*name.split(".")[1:])
        theirs = _layer(target_path.with_suffix(".py") if not module.is_dir() else target_path)
        if theirs > mine:
            wrong.append(f"{relative}:{line} (layer {mine}) imports {name} (layer {theirs})")
    assert not wrong, "\n".join(wrong)


def test_the_check_catches_an_upward_import(tmp_path):
    """The parser sees function-local imports (most heavy imports here are local)."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from dalle2.eval.evaluate import evaluate_model\n")
    assert _imports(source) == [(2, "dalle2.eval.evaluate")]
