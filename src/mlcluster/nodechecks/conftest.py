"""Node checks run with testinfra against any inventory:

    pytest --pyargs mlcluster.nodechecks --hosts='ansible://all' --ansible-inventory=INVENTORY

`mlcluster validate -i INVENTORY` runs them and summarises the results per node.
"""

from __future__ import annotations

import pytest
import testinfra

# How deep the checks go (`mlcluster validate --level`): quick (seconds: daemons, devices,
# libraries), standard (adds DCGM's short diagnostic), full (DCGM's long diagnostic; the
# cluster-wide fabric ping-pong runs in `mlcluster validate` itself).
LEVELS = ("quick", "standard", "full")


def pytest_addoption(parser):
    parser.addoption("--level", choices=LEVELS, default="quick", help="depth of the checks")


@pytest.fixture(scope="session")
def level(request) -> str:
    return request.config.getoption("--level")


def _groups(host) -> list[str]:
    return list(host.ansible.get_variables().get("group_names", []))


@pytest.fixture
def groups(host) -> list[str]:
    """Inventory groups of the node under test."""
    return _groups(host)


@pytest.fixture
def node_vars(host) -> dict:
    """The node's inventory variables (group_vars and host_vars applied)."""
    return host.ansible.get_variables()


@pytest.fixture(scope="session")
def controller(request):
    """The Slurm controller of the inventory (the first host of group slurm_controller)."""
    inventory = request.config.option.ansible_inventory
    if not inventory:
        pytest.fail("pass --ansible-inventory so the checks can find the Slurm controller")
    runner = testinfra.utils.ansible_runner.AnsibleRunner(inventory)
    hosts = runner.get_hosts("slurm_controller")
    if len(hosts) != 1:
        pytest.fail(f"the inventory's group slurm_controller has {len(hosts)} hosts, not 1")
    return testinfra.get_host(f"ansible://{hosts[0]}", ansible_inventory=inventory)
