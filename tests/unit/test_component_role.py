"""mlcluster.core.component: the pieces the component roles share instead of copying them.

The roles load their distribution's data, write their component record and notify the linker
cache refresh through it; a throwaway role on this machine shows that each piece does what the
roles' own copies did (the record is byte for byte what image_manifest reads back)."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
import yaml

from mlcluster.paths import collection_plugins, project_root
from mlcluster.runner import EXIT_OK, run_playbook

ROOT = project_root()
COMPONENT = collection_plugins().parent / "roles" / "component"
HANDLER = "Refresh the dynamic linker cache"


def _claim_roles() -> list[str]:
    """The roles that write a component record: those whose vars define __<role>_claim."""
    return sorted(
        path.parents[1].name
        for path in (ROOT / "roles").glob("*/vars/main.yml")
        if f"__{path.parents[1].name}_claim" in (yaml.safe_load(path.read_text()) or {})
    )


def test_the_roles_record_through_the_component_role():
    roles = _claim_roles()
    assert len(roles) >= 11, roles
    for role in roles:
        claim = yaml.safe_load((ROOT / "roles" / role / "vars" / "main.yml").read_text())[
            f"__{role}_claim"
        ]
        # The record is named by the claim: <role>.json, as image_manifest looks it up.
        assert claim["component"] == role
        install = yaml.safe_load((ROOT / "roles" / role / "tasks" / "install.yml").read_text())
        includes = [(t, t.get("ansible.builtin.include_role") or {}) for t in install]
        records = [t for t, include in includes if include.get("tasks_from") == "record"]
        assert len(records) == 1, f"{role}: install.yml does not record through the component role"
        assert records[0]["ansible.builtin.include_role"]["name"] == "mlcluster.core.component"
        assert records[0]["vars"] == {"component_claim": f"{{{{ __{role}_claim }}}}"}


def test_no_role_keeps_a_copy_of_the_shared_pieces():
    for path in sorted((ROOT / "roles").glob("*/tasks/*.yml")):
        text = path.read_text()
        assert "/etc/mlcluster/components" not in text, f"{path}: writes a record itself"
        assert path.name != "distro_vars.yml", f"{path}: a copy of component's distro_vars"
    for path in sorted((ROOT / "roles").glob("*/handlers/*.yml")):
        names = [h.get("name") for h in yaml.safe_load(path.read_text()) or []]
        assert HANDLER not in names, f"{path}: defines {HANDLER!r} again"


def test_roles_that_notify_the_linker_refresh_depend_on_the_component_role():
    """Their notify resolves to component's handler whatever ran before in the play."""
    notifying = sorted(
        {
            p.parents[1].name
            for p in (ROOT / "roles").glob("*/tasks/*.yml")
            if HANDLER in p.read_text()
        }
    )
    assert notifying, "no role notifies the linker cache refresh"
    for role in notifying:
        meta = yaml.safe_load((ROOT / "roles" / role / "meta" / "main.yml").read_text())
        assert {"role": "mlcluster.core.component"} in meta["dependencies"], role


def _throwaway_role(root, records_dir, *, notify: bool):
    """A role laid out as the component roles are: vars per distribution, a claim, a notify."""
    role = root / "roles" / "probe_component"
    for part in ("tasks", "vars", "meta"):
        (role / part).mkdir(parents=True)
    (role / "meta" / "main.yml").write_text(
        yaml.safe_dump({"dependencies": [{"role": "mlcluster.core.component"}]})
    )
    # Both names for each distribution: the <distribution>_<major> file must win.
    for distro in ("Debian", "Ubuntu", "Amazon", "RedHat", "Rocky", "Fedora", "Archlinux"):
        (role / "vars" / f"{distro}.yml").write_text("__probe_component_data: distribution\n")
    (role / "vars" / "main.yml").write_text(
        yaml.safe_dump(
            {
                "__probe_component_flag": True,
                "__probe_component_claim": {
                    "component": "probe_component",
                    "source": "distro",
                    "version": "{{ None if __probe_component_flag else '1.0' }}",
                    "packages": ["rdma-core", "libfabric1"],
                    "gpudirect": "{{ __probe_component_flag }}",
                    "count": "{{ 3 + 4 }}",
                },
            }
        )
    )
    tasks = [
        {
            "name": "Write the data of this distribution and major version",
            "ansible.builtin.copy": {
                "content": "__probe_component_data: major\n",
                "dest": "{{ role_path }}/vars/{{ ansible_facts['distribution'] }}_"
                "{{ ansible_facts['distribution_major_version'] }}.yml",
                "mode": "0644",
            },
            "check_mode": False,
        },
        {
            "name": "Load the distribution's data",
            "ansible.builtin.include_role": {
                "name": "mlcluster.core.component",
                "tasks_from": "distro_vars",
            },
        },
        {
            "name": "Check the data is this role's, for the major version",
            "ansible.builtin.assert": {"that": "__probe_component_data == 'major'"},
        },
        {
            "name": "Change something that needs the linker cache refreshed",
            "ansible.builtin.debug": {"msg": "changed"},
            "changed_when": True,
            "notify": HANDLER,
            "when": notify,
        },
        {
            "name": "Record what the image should contain",
            "ansible.builtin.include_role": {
                "name": "mlcluster.core.component",
                "tasks_from": "record",
            },
            "vars": {
                "component_claim": "{{ __probe_component_claim }}",
                "component_records_dir": str(records_dir),
            },
        },
    ]
    (role / "tasks" / "main.yml").write_text(yaml.safe_dump(tasks, sort_keys=False))
    playbook = root / "probe.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Probe",
                    "hosts": "all",
                    "gather_facts": True,
                    "roles": [{"role": str(role)}],
                }
            ]
        )
    )
    hosts = root / "hosts.yml"
    hosts.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {"probe": None},
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                    },
                }
            }
        )
    )
    return playbook, hosts


def test_distro_data_and_linker_refresh_resolve_in_check_mode(tmp_path):
    """Check mode: the handler is found (a notify that resolves to nothing fails the run) and
    is skipped with the rest of the commands; the data file is the calling role's."""
    playbook, hosts = _throwaway_role(tmp_path, tmp_path / "records", notify=True)
    result = run_playbook(str(playbook), hosts, check=True)
    assert result.exit_code == EXIT_OK, result.errors
    assert not (tmp_path / "records").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the records are owned by root, as on a node")
def test_the_record_is_what_the_roles_copy_wrote(tmp_path):
    records = tmp_path / "records"
    # No notify: the handler would run this machine's ldconfig.
    playbook, hosts = _throwaway_role(tmp_path, records, notify=False)
    result = run_playbook(str(playbook), hosts)
    assert result.exit_code == EXIT_OK, result.errors
    record = records / "probe_component.json"
    expected = {
        "component": "probe_component",
        "source": "distro",
        "version": None,
        "packages": ["rdma-core", "libfabric1"],
        "gpudirect": True,
        "count": 7,
    }
    # to_nice_json, as the roles' own copy task wrote it: sorted keys, four spaces, newline.
    assert record.read_text() == json.dumps(expected, indent=4, sort_keys=True) + "\n"
    assert stat.S_IMODE(records.stat().st_mode) == 0o755
    assert stat.S_IMODE(record.stat().st_mode) == 0o644
    again = run_playbook(str(playbook), hosts)
    assert again.exit_code == EXIT_OK, again.errors
    assert again.hosts["probe"]["changed"] == 0


def test_component_defaults_match_its_argument_spec():
    defaults = yaml.safe_load((COMPONENT / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((COMPONENT / "meta" / "argument_specs.yml").read_text())
    spec_defaults = {
        name: option["default"]
        for entry in specs["argument_specs"].values()
        for name, option in (entry.get("options") or {}).items()
        if "default" in option
    }
    assert defaults == spec_defaults
    assert all(re.match(r"component_", name) for name in defaults)
