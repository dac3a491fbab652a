"""Generate each role's README variable table, and its commented variables in
inventory/sample/group_vars/all/<role>.yml, from its meta/argument_specs.yml.

`python -m mlcluster.roledocs` rewrites the tables; `--check` fails when one is out of date
(the test suite runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from .paths import project_root

BEGIN = "<!-- BEGIN VARIABLES (generated from meta/argument_specs.yml) -->"
END = "<!-- END VARIABLES -->"


def _cell(value) -> str:
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _default(option: dict) -> str:
    if "default" not in option:
        return "required" if option.get("required") else ""
    text = yaml.safe_dump(option["default"], default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return f"`{text}`" if len(text) <= 80 else "see `defaults/main.yml`"


def render(spec_file: Path) -> str:
    data = yaml.safe_load(spec_file.read_text()) or {}
    entries = data.get("argument_specs") or {}
    main = entries.get("main") or next(iter(entries.values()), {}) or {}
    lines = [BEGIN, ""]
    lines.append(f"Entry points: {', '.join(f'`{e}`' for e in entries)}.")
    lines.append("")
    lines.append("| variable | type | default | description |")
    lines.append("| --- | --- | --- | --- |")
    for name, option in sorted((main.get("options") or {}).items()):
        kind = option.get("type", "str")
        if option.get("elements"):
            kind += f" of {option['elements']}"
        if option.get("choices"):
            kind += " (" + ", ".join(map(str, option["choices"])) + ")"
        lines.append(
            f"| `{name}` | {kind} | {_cell(_default(option))} | "
            f"{_cell(option.get('description', ''))} |"
        )
    lines += ["", END]
    return "\n".join(lines)


def update(role_dir: Path, check: bool) -> bool:
    """Rewrite (or check) the role's README; True when it was already up to date."""
    spec = role_dir / "meta" / "argument_specs.yml"
    readme = role_dir / "README.md"
    table = render(spec)
    data = yaml.safe_load(spec.read_text()) or {}
    main = (data.get("argument_specs") or {}).get("main") or {}
    if readme.exists():
        text = readme.read_text()
    else:
        description = main.get("description") or main.get("short_description") or ""
        if isinstance(description, list):
            description = "\n".join(description)
        text = f"# Role `{role_dir.name}`\n\n{description}\n\n## Variables\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        new = head + table + rest.split(END, 1)[1]
    else:
        new = text.rstrip("\n") + "\n\n## Variables\n\n" + table + "\n"
    if new == text:
        return True
    if not check:
        readme.write_text(new)
    return False


def sample_vars(spec_file: Path) -> str:
    """The role's variables, commented, for inventory/sample/group_vars/all/<role>.yml."""
    data = yaml.safe_load(spec_file.read_text()) or {}
    entries = data.get("argument_specs") or {}
    main = entries.get("main") or next(iter(entries.values()), {}) or {}
    role = spec_file.parents[1].name
    out = [
        "---",
        f"# Variables of role {role} (generated from roles/{role}/meta/argument_specs.yml by",
        "# `python -m mlcluster.roledocs`). Uncomment and edit to override the default.",
    ]
    for name, option in sorted((main.get("options") or {}).items()):
        description = option.get("description", "")
        if isinstance(description, list):
            description = " ".join(description)
        out.append("")
        words, line = description.split(), "#"
        for word in words:
            if len(line) + len(word) + 1 > 98:
                out.append(line)
                line = "#"
            line += " " + word
        if line != "#":
            out.append(line)
        if option.get("choices"):
            out.append("# Choices: " + ", ".join(map(str, option["choices"])) + ".")
        if "default" in option:
            dumped = yaml.safe_dump({name: option["default"]}, sort_keys=False, width=90)
            out += ["# " + row for row in dumped.rstrip("\n").splitlines()]
        else:
            out.append(f"# {name}:  (required)" if option.get("required") else f"# {name}:")
    return "\n".join(out) + "\n"


def update_sample(spec_file: Path, check: bool) -> bool:
    target = (
        project_root()
        / "inventory"
        / "sample"
        / "group_vars"
        / "all"
        / f"{spec_file.parents[1].name}.yml"
    )
    text = sample_vars(spec_file)
    if target.exists() and target.read_text() == text:
        return True
    if not check:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    specs = sorted((project_root() / "roles").glob("*/meta/argument_specs.yml"))
    stale = [spec.parents[1].name for spec in specs if not update(spec.parents[1], check)]
    stale += [
        f"inventory/sample ({spec.parents[1].name})"
        for spec in specs
        if not update_sample(spec, check)
    ]
    if stale and check:
        print("role docs out of date (run `python -m mlcluster.roledocs`): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
