#!/usr/bin/python
"""Write a role's directories and files in one call: only those that differ change."""

from __future__ import annotations

DOCUMENTATION = r"""
module: files
author: mlcluster developers
short_description: Make a set of directories and files match, in one round trip
description:
  - Creates the I(directories) and writes the I(files) (content given, usually rendered on the
    controller with the C(ansible.builtin.template) lookup), each with its owner, group and mode.
    Only what differs changes; a role's whole configuration is one task and one connection
    instead of one task per file.
  - A file whose content differs is written to a temporary file beside it and checked with its
    I(validate) command when one is given; only when every file of the set has passed are they
    renamed over the old ones, so a reader never sees half a file and a file that fails its
    check leaves the whole set as it was. A symbolic link at I(dest) is replaced by the file,
    never followed.
  - Returns which paths changed, so that handlers and later tasks act only on those (for example
    a daemon-reload only where a unit file changed).
options:
  directories:
    description: Directories to create (parents included) or to correct.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The directory.
        type: path
        required: true
      owner:
        description: Owner (name).
        type: str
        default: root
      group:
        description: Group (name).
        type: str
        default: root
      mode:
        description: Mode, an octal string.
        type: str
        default: "0755"
  files:
    description: Files to write.
    type: list
    elements: dict
    default: []
    suboptions:
      dest:
        description: The file.
        type: path
        required: true
      content:
        description: Its whole content.
        type: str
        required: true
      owner:
        description: Owner (name).
        type: str
        default: root
      group:
        description: Group (name).
        type: str
        default: root
      mode:
        description: Mode, an octal string.
        type: str
        default: "0644"
      validate:
        description:
          - Command run on the new content before it replaces the file, C(%s) standing for the
            temporary file's path; a non-zero exit fails the task and leaves the file as it was.
        type: str
  absent:
    description:
      - Files (or links) to remove once every file has passed its check. A directory here is an
        error.
    type: list
    elements: path
    default: []
notes:
  - Supports check mode (nothing is written or validated) and diff mode.
"""

EXAMPLES = r"""
- name: Write the node exporter's files
  mlcluster.core.files:
    directories:
      - path: /var/lib/prometheus/node-exporter
    files:
      - dest: /etc/default/prometheus-node-exporter
        content: "{{ lookup('ansible.builtin.template', 'etc/default/node-exporter.j2') }}"
  register: _files
  notify: Restart the node exporter
"""

RETURN = r"""
changed_files:
  description: The files written or whose owner, group or mode was corrected.
  type: list
  elements: str
  returned: always
changed_directories:
  description: The directories created or corrected.
  type: list
  elements: str
  returned: always
removed:
  description: The paths of I(absent) that existed and were removed.
  type: list
  elements: str
  returned: always
"""

import grp  # noqa: E402
import os  # noqa: E402
import pwd  # noqa: E402
import shlex  # noqa: E402
import stat  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

_DIRECTORY = {
    "path": {"type": "path", "required": True},
    "owner": {"type": "str", "default": "root"},
    "group": {"type": "str", "default": "root"},
    "mode": {"type": "str", "default": "0755"},
}
_FILE = {
    "dest": {"type": "path", "required": True},
    "content": {"type": "str", "required": True, "no_log": False},
    "owner": {"type": "str", "default": "root"},
    "group": {"type": "str", "default": "root"},
    "mode": {"type": "str", "default": "0644"},
    "validate": {"type": "str"},
}


def ids(module, owner, group):
    try:
        return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError as error:
        module.fail_json(msg=f"no such user or group on this node: {error.args[0]}")


def parse_mode(module, text, where):
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        module.fail_json(msg=f"{where}: mode {text!r} is not an octal mode such as 0644")
    return mode


def attributes_differ(info, uid, gid, mode):
    return (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) != (uid, gid, mode)


def make_directory(module, spec):
    path = spec["path"]
    uid, gid = ids(module, spec["owner"], spec["group"])
    mode = parse_mode(module, spec["mode"], path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        module.fail_json(msg=f"{path} exists and is not a directory")
    if info is not None and not attributes_differ(info, uid, gid, mode):
        return False
    if not module.check_mode:
        os.makedirs(path, exist_ok=True)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return True


def read_current(path):
    """The file's bytes and stat, or (None, None) where there is no regular file to keep."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None, None
    if not stat.S_ISREG(info.st_mode):
        return None, info
    with open(path, "rb") as handle:
        return handle.read(), info


def validate(module, command, path):
    if "%s" not in command:
        module.fail_json(msg=f"validate must contain %s: {command}")
    argv = [part.replace("%s", path) for part in shlex.split(command)]
    rc, out, err = module.run_command(argv)
    if rc != 0:
        return (err or out).strip() or f"exit {rc}"
    return None


def prepare_file(module, spec, diffs, staged):
    """Whether the file changes; where its content does, the new content is staged (written to
    a temporary file beside it and checked) and its path added to `staged`."""
    dest = spec["dest"]
    uid, gid = ids(module, spec["owner"], spec["group"])
    mode = parse_mode(module, spec["mode"], dest)
    wanted = spec["content"].encode()
    current, info = read_current(dest)
    if info is not None and stat.S_ISDIR(info.st_mode):
        module.fail_json(msg=f"{dest} is a directory")
    content_differs = current != wanted
    if not content_differs and not attributes_differ(info, uid, gid, mode):
        return False
    if module._diff and content_differs:
        diffs.append(
            {
                "before_header": dest,
                "after_header": dest,
                "before": current.decode(errors="replace") if current is not None else "",
                "after": spec["content"],
            }
        )
    if module.check_mode:
        return True
    if not content_differs:
        os.chown(dest, uid, gid)
        os.chmod(dest, mode)
        return True
    directory = os.path.dirname(dest) or "."
    if not os.path.isdir(directory):
        module.fail_json(msg=f"{dest}: its directory {directory} does not exist")
    # The same extension as the file: some checkers (promtool, amtool) go by it.
    fd, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(dest)}.", suffix=os.path.splitext(dest)[1], dir=directory
    )
    staged.append((temporary, dest))
    with os.fdopen(fd, "wb") as handle:
        handle.write(wanted)
    os.chown(temporary, uid, gid)
    os.chmod(temporary, mode)
    if spec.get("validate"):
        error = validate(module, spec["validate"], temporary)
        if error:
            module.fail_json(msg=f"{dest}: the new content fails its check: {error}")
    return True


def present(module, path):
    """Whether `path` is there to remove (a file or a link; a directory is refused)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(info.st_mode):
        module.fail_json(msg=f"{path} is a directory: absent removes files only")
    return True


def write_files(module, specs, absent, diffs):
    """Stage and check every file first, then rename them all and remove the absent ones: a
    file that fails its check leaves the whole set as it was."""
    staged = []
    try:
        changed = [spec["dest"] for spec in specs if prepare_file(module, spec, diffs, staged)]
        removed = [path for path in absent if present(module, path)]
        if module.check_mode:
            return changed, removed
        for temporary, dest in staged:
            os.replace(temporary, dest)
        for path in removed:
            os.unlink(path)
    finally:
        for temporary, _dest in staged:
            if os.path.exists(temporary):
                os.unlink(temporary)
    return changed, removed


def main():
    module = AnsibleModule(
        argument_spec={
            "directories": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": _DIRECTORY,
            },
            "files": {"type": "list", "elements": "dict", "default": [], "options": _FILE},
            "absent": {"type": "list", "elements": "path", "default": []},
        },
        supports_check_mode=True,
    )
    changed_directories = [
        spec["path"] for spec in module.params["directories"] if make_directory(module, spec)
    ]
    diffs = []
    changed_files, removed = write_files(
        module, module.params["files"], module.params["absent"], diffs
    )
    result = {
        "changed": bool(changed_directories or changed_files or removed),
        "changed_files": changed_files,
        "changed_directories": changed_directories,
        "removed": removed,
    }
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
