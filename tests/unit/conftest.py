"""Fixtures of the unit tests that talk to AWS APIs: a moto server and an AWS environment of
fakes. A module that needs them says `pytestmark = pytest.mark.usefixtures("aws_env")`."""

from __future__ import annotations

import os

import pytest
from moto.server import ThreadedMotoServer

REGION = "us-west-2"


@pytest.fixture(scope="module")
def moto_url():
    """A moto server on 127.0.0.1: real HTTP, every AWS service moto has."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials only; no profile or config file of the person running the tests."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
