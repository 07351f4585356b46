"""moto in-process, for the spawner's AWS plumbing tests."""

from __future__ import annotations

import pytest
from moto import mock_aws

REGION = "us-east-1"


@pytest.fixture
def moto_aws(monkeypatch):
    """Test credentials and region in the environment, every boto3 call served by moto."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield
