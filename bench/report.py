"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections alone."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Written by the scripts under `bench/`; each section says how it was measured.\n"
)


def machine() -> str:
    import os

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node() or 'host'}: {os.cpu_count()} cores, {mem_gib:.0f} GiB, "
        f"{platform.system()} {platform.release()}, {time.strftime('%Y-%m-%d')}"
    )


# Text of a section from this line on is written by hand (what the figures say, what changed):
# a rewrite of the section keeps it after the new figures.
KEPT = "<!-- written by hand: kept when the script rewrites this section -->"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the section `## title` with `body`, keeping its hand-written end."""
    text = DOC.read_text() if DOC.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    found = pattern.search(text)
    if found and KEPT in found.group(0):
        section += "\n" + found.group(0)[found.group(0).index(KEPT) :].rstrip("\n") + "\n"
    if found:
        text = pattern.sub(lambda _m: section + "\n", text).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
