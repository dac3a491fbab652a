"""Every plugin of the collection documents itself in YAML that parses (ansible-doc and
ansible-lint read it; a broken block is only printed as an error, never a failed lint)."""

from __future__ import annotations

import ast

import pytest
import yaml

from mlcluster.paths import collection_plugins

PLUGINS = sorted(
    p
    for kind in ("modules", "filter", "lookup", "inventory")
    for p in (collection_plugins() / kind).glob("*.py")
    if p.name != "__init__.py"
)


def _blocks(path) -> dict[str, str]:
    blocks = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in (
                    "DOCUMENTATION",
                    "EXAMPLES",
                    "RETURN",
                ):
                    blocks[target.id] = node.value.value
    return blocks


@pytest.mark.parametrize("path", PLUGINS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_documentation_parses(path):
    blocks = _blocks(path)
    assert "DOCUMENTATION" in blocks, f"{path.name} has no DOCUMENTATION"
    for name, text in blocks.items():
        try:
            # EXAMPLES may show several files, one YAML document each.
            list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            pytest.fail(f"{path.name}: {name} is not YAML: {exc}")
    doc = yaml.safe_load(blocks["DOCUMENTATION"])
    assert doc.get("short_description"), path.name
