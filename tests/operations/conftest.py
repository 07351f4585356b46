"""The operations tests use the spawner tests' in-process moto."""

from tests.spawner.conftest import moto_aws

__all__ = ["moto_aws"]
