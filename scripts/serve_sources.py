#!/usr/bin/env python3
"""Serve the enroot/pyxis source archives versions.yml pins, made from local git copies.

The enroot_pyxis role downloads `mlcluster_mirror_base/<source>/<path>` for each of
components.enroot_pyxis.downloads when `mlcluster_mirror_base` is set, and refuses an archive
that is not `git archive` of the pinned commit. Where GitHub (or GitLab, cgit) is out of reach
but bare copies of the repositories are at hand, this script writes, for every download pinned
by commit, `git archive --prefix=<repo>-<commit>/ <commit>` (what those hosts serve: the
commit id in the pax header, one top directory) to DIR/<source>/<path>, then serves DIR over
HTTP and prints the mirror base on its first line of output:

    scripts/serve_sources.py --bind 10.213.187.1 [--port 0] [--sources-dir /work/.mirror] [DIR]
    ansible-playbook ... -e mlcluster_mirror_base=<printed URL>

The copies are found as SOURCES_DIR/<owner>+<name>/repo (or SOURCES_DIR/<owner>+<name>, a
bare git directory); libbsd and musl come from their GitHub mirrors (guillemj/libbsd,
bminor/musl). It serves until interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES = os.environ.get("MLCLUSTER_SOURCES_DIR", "/work/.mirror")
# Downloads not on GitHub: the GitHub mirror of their repository.
MIRRORS = {"enroot_libbsd": "guillemj/libbsd", "enroot_musl": "bminor/musl"}


def repository(name: str, entry: dict) -> str:
    """owner/name of the git repository a download is the archive of."""
    if name in MIRRORS:
        return MIRRORS[name]
    if entry["source"] != "github":
        raise SystemExit(f"{name}: no git repository known for source {entry['source']}")
    owner, repo = str(entry["path"]).split("/")[:2]
    return f"{owner}/{repo}"


def git_dir(sources: Path, repo: str) -> Path:
    base = sources / repo.replace("/", "+")
    for candidate in (base / "repo", base):
        if (candidate / "objects").is_dir() or (candidate / ".git").exists():
            return candidate
    raise SystemExit(f"no git copy of {repo} under {base}")


def prepare(
    versions_file: Path, sources: Path, out: Path, component: str = "enroot_pyxis"
) -> list[Path]:
    """Write the archive of every commit-pinned download of the component under out."""
    versions = yaml.safe_load(versions_file.read_text())["mlcluster_versions"]
    written = []
    for name, entry in versions["components"][component]["downloads"].items():
        commit = entry.get("commit")
        if not commit:
            continue
        repo = repository(name, entry)
        dest = out / entry["source"] / str(entry["path"]).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        prefix = f"{repo.split('/')[1]}-{commit}/"
        with dest.open("wb") as fh:
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(git_dir(sources, repo)),
                    "archive",
                    "--format=tar.gz",
                    f"--prefix={prefix}",
                    commit,
                ],
                stdout=fh,
                check=True,
            )
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "dir", nargs="?", help="where to write the archives (default: a temporary directory)"
    )
    parser.add_argument(
        "--bind", default="127.0.0.1", help="address to serve on (the nodes must reach it)"
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    parser.add_argument(
        "--sources-dir", default=DEFAULT_SOURCES, help="the git copies (<owner>+<name>)"
    )
    parser.add_argument("--versions", default=str(ROOT / "versions.yml"))
    parser.add_argument("--prepare-only", action="store_true", help="write the archives and exit")
    args = parser.parse_args(argv)

    out = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mlcluster-sources-"))
    written = prepare(Path(args.versions), Path(args.sources_dir), out)
    for path in written:
        print(f"# {path.relative_to(out)}", file=sys.stderr)
    if args.prepare_only:
        print(out)
        return 0
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer((args.bind, args.port), handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"http://{args.bind}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
