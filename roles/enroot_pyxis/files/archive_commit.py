#!/usr/bin/env python3
"""Check that a source archive was made from the commit versions.yml pins.

`git archive` (behind GitHub's, GitLab's and cgit's archive downloads) writes the commit id
into the archive's pax global header (`comment`); `git get-tar-commit-id` reads the same field.
An archive without that header is judged by its single top-level directory, which those hosts
name `<repo>-<commit>`. Prints the commit found; exits 1 with the reason on a mismatch.

Usage: archive_commit.py ARCHIVE COMMIT
"""

from __future__ import annotations

import sys
import tarfile


def archive_commit(path: str) -> tuple[str, str]:
    """(commit id from the pax header or '', the top-level directory names joined by ',')."""
    with tarfile.open(path, mode="r|*") as archive:
        tops = set()
        for member in archive:
            tops.add(member.name.lstrip("./").split("/", 1)[0])
        return str(archive.pax_headers.get("comment", "")).strip(), ",".join(sorted(tops))


def check(path: str, commit: str) -> str | None:
    """None when the archive is the commit's, else why not."""
    found, tops = archive_commit(path)
    if found:
        if found != commit:
            return f"{path} was made from commit {found}, not the pinned {commit}"
        return None
    if "," in tops or not tops.endswith(commit):
        return (
            f"{path} names no commit in its header and its top directory ({tops}) is not "
            f"<repo>-{commit}"
        )
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    path, commit = argv
    try:
        problem = check(path, commit)
    except (OSError, tarfile.TarError) as exc:
        problem = f"{path} is not a readable tar archive: {exc}"
    if problem:
        print(f"source archive mismatch: {problem}", file=sys.stderr)
        return 1
    print(commit)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
