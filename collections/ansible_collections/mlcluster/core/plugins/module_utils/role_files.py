"""Which of a role's files its install phase can read: the one rule behind the install_digest
lookup (a node skips an install phase it holds) and the local node image's inputs
(src/mlcluster/images.py: an edit to any other file needs no re-bake)."""

from __future__ import annotations

# Files of a role that only the configure phase reads.
CONFIGURE_ONLY = ("tasks/configure", "handlers/", "README.md")


def install_file(relative: str) -> bool:
    """Whether the install phase can read a role's file, given its path below the role's
    directory (or below the roles' directory: ``ROLE/tasks/...``)."""
    return "__pycache__" not in relative.split("/") and not any(
        part in relative for part in CONFIGURE_ONLY
    )
