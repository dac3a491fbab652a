"""The install_digest lookup: what changes a role's install digest and what does not."""

from __future__ import annotations

import shutil

import pytest
from ansible.errors import AnsibleLookupError

from mlcluster import images
from mlcluster.paths import load_plugin, project_root

lookup = load_plugin("lookup", "install_digest")


@pytest.fixture
def tree(tmp_path):
    roles = tmp_path / "roles"
    shutil.copytree(project_root() / "roles" / "munge", roles / "munge")
    shutil.copy(project_root() / "versions.yml", tmp_path / "versions.yml")
    return tmp_path


def digest(tree):
    return lookup.install_digest(tree / "roles" / "munge", tree / "versions.yml")


@pytest.mark.parametrize(
    "path",
    ["tasks/install.yml", "tasks/main.yml", "defaults/main.yml", "meta/argument_specs.yml"],
)
def test_an_install_input_changes_the_digest(tree, path):
    before = digest(tree)
    target = tree / "roles" / "munge" / path
    target.write_text(target.read_text() + "\n# changed\n")
    assert digest(tree) != before


def test_the_version_manifest_changes_the_digest(tree):
    before = digest(tree)
    (tree / "versions.yml").write_text((tree / "versions.yml").read_text() + "\n# changed\n")
    assert digest(tree) != before


@pytest.mark.parametrize("path", ["tasks/configure.yml", "handlers/main.yml", "README.md"])
def test_what_only_the_configure_phase_reads_does_not(tree, path):
    before = digest(tree)
    target = tree / "roles" / "munge" / path
    target.write_text(target.read_text() + "\n# changed\n")
    assert digest(tree) == before


def test_the_same_files_as_the_local_images_inputs():
    """Every role's install inputs are its files among the node image's bake inputs: an edit
    that runs an install phase again also re-bakes the image, and none other does."""
    root = project_root()
    baked = set(images.bake_inputs())
    for role_dir in sorted(p for p in (root / "roles").iterdir() if p.is_dir()):
        inputs = set(lookup.install_inputs(role_dir, root / "versions.yml"))
        own = {p for p in inputs if role_dir in p.parents}
        assert own == {p for p in baked if role_dir in p.parents}, role_dir.name
        assert not [
            p for p in own if p.relative_to(role_dir).as_posix().startswith(CONFIGURE_PATHS)
        ], role_dir.name


CONFIGURE_PATHS = ("tasks/configure", "handlers/", "README.md")


def test_a_role_that_does_not_exist_is_an_error(tree):
    with pytest.raises(AnsibleLookupError, match="does not exist"):
        lookup.install_digest(tree / "roles" / "nosuchrole", tree / "versions.yml")


def test_the_variables_the_install_phase_reads_are_those_of_its_files(tree):
    role = tree / "roles" / "munge"
    inputs = lookup.install_inputs(role, tree / "versions.yml")
    stamp = tuple((str(p), p.stat().st_mtime_ns) for p in inputs)
    names = lookup.install_variables(role, stamp)
    # munge's install phase reads the key's path (to remove the key the package made); the key's
    # host and size are the configure phase's.
    assert "munge_key_path" in names
    assert "munge_key_host" not in names and "munge_rotate_key" not in names


def test_the_values_of_the_variables_change_the_digest(tree):
    role, versions = tree / "roles" / "munge", tree / "versions.yml"
    base = lookup.install_digest(role, versions, {"munge_key_path": "/etc/munge/munge.key"})
    other = lookup.install_digest(role, versions, {"munge_key_path": "/srv/munge.key"})
    assert base != other
    assert base == lookup.install_digest(role, versions, {"munge_key_path": "/etc/munge/munge.key"})


def test_only_the_templates_and_vars_the_install_phase_reaches_count():
    # The shipped slurm role: slurm.conf and the health check's settings are rendered by the
    # configure phase only, so inventory values that only they read (the local inventory sets
    # slurm_healthcheck_mounts) must not make a node from the baked image install again.
    role = project_root() / "roles" / "slurm"
    names = lookup.install_variables(role.resolve(), ("shipped",))
    assert names == (
        "slurm_accounting_enabled",
        "slurm_compute",
        "slurm_controller",
        "slurm_image_components",
        "slurm_login",
        "slurm_managed_by",
    )
    # tuning's install phase renders its own templates: their variables count.
    tuning = lookup.install_variables((project_root() / "roles" / "tuning").resolve(), ("t",))
    assert "tuning_transparent_hugepage" in tuning and "tuning_systemd_limits" in tuning


def test_internal_variables_count_through_every_variable_they_reach(tmp_path):
    role = tmp_path / "demo"
    (role / "tasks").mkdir(parents=True)
    (role / "vars").mkdir()
    (role / "templates").mkdir()
    (role / "tasks" / "install.yml").write_text(
        "- name: Install the packages\n"
        "  ansible.builtin.apt:\n"
        '    name: "{{ __demo_packages }}"  # not demo_commented\n'
        "- name: Write the unit\n"
        "  ansible.builtin.template:\n"
        "    src: demo.service.j2\n"
        "    dest: /etc/systemd/system/demo.service\n"
    )
    (role / "vars" / "main.yml").write_text(
        '__demo_packages: "{{ __demo_base + demo_extra_packages }}"\n'
        "__demo_base:\n"
        '  - "{{ demo_core_package }}"  # demo_commented_too\n'
        '__demo_configure_only: "{{ demo_configure_value }}"\n'
    )
    (role / "templates" / "demo.service.j2").write_text("ExecStart={{ demo_binary }}\n")
    (role / "templates" / "demo.conf.j2").write_text("{{ demo_configure_setting }}\n")
    assert lookup.install_variables(role.resolve(), ("demo",)) == (
        "demo_binary",
        "demo_core_package",
        "demo_extra_packages",
    )
