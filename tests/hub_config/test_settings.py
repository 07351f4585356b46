"""Environment variables of the hub: each missing or malformed one is named at start-up."""

from __future__ import annotations

import pytest

from hub_config.settings import DEFAULT_COMMUNITIES_FILE, HubSettings, SettingsError

GOOD = {
    "SYNAPSE_CLIENT_ID": "client",
    "SYNAPSE_CLIENT_SECRET": "secret",
    "SNH_PUBLIC_URL": "https://notebooks.example.org/",
    "JUPYTERHUB_CRYPT_KEY": "00" * 32,
}


def test_defaults_are_production_synapse():
    settings = HubSettings.from_environ(GOOD)
    assert settings.issuer == "https://repo-prod.prod.sagebase.org/auth/v1"
    assert settings.signin_url == "https://signin.synapse.org"
    assert settings.oauth_callback_url == "https://notebooks.example.org/hub/oauth_callback"
    assert settings.communities_file == DEFAULT_COMMUNITIES_FILE
    assert settings.db_url == "sqlite:///jupyterhub.sqlite"


@pytest.mark.parametrize(
    "name",
    ["SYNAPSE_CLIENT_ID", "SYNAPSE_CLIENT_SECRET", "SNH_PUBLIC_URL", "JUPYTERHUB_CRYPT_KEY"],
)
def test_missing_required_variable_is_named(name):
    env = {k: v for k, v in GOOD.items() if k != name}
    with pytest.raises(SettingsError, match=name):
        HubSettings.from_environ(env)


@pytest.mark.parametrize(
    "name, value, says",
    [
        ("SNH_PUBLIC_URL", "notebooks.example.org", "not an http(s) URL"),
        ("SNH_PUBLIC_URL", "https://example.org/hub", "must not have a path"),
        ("SYNAPSE_ISSUER", "ftp://synapse", "not an http(s) URL"),
        ("SYNAPSE_SIGNIN_URL", "signin", "not an http(s) URL"),
        ("SNH_BIND_URL", ":8000", "not an http(s) URL"),
        ("SNH_COMMUNITIES_FILE", "/nonexistent/communities.yaml", "no such file"),
        ("SNH_EXTRA_CONFIG", "/nonexistent/extra.py", "no such file"),
        ("SNH_PARAMETER_PREFIX", "no-leading-slash", "a parameter path"),
        ("SNH_PARAMETER_PREFIX", "/with space", "a parameter path"),
        ("SNH_PARAMETER_KMS_KEY_ID", "my key", "a KMS key id"),
    ],
)
def test_malformed_variable_is_named(name, value, says):
    with pytest.raises(SettingsError) as e:
        HubSettings.from_environ({**GOOD, name: value})
    assert any(p.startswith(name) and says in p for p in e.value.problems), e.value.problems


def test_all_problems_are_reported_together():
    with pytest.raises(SettingsError) as e:
        HubSettings.from_environ({"SNH_PUBLIC_URL": "nope"})
    assert len(e.value.problems) == 4
    assert "fix these environment variables" in str(e.value)


def test_state_dir_places_the_database(tmp_path):
    settings = HubSettings.from_environ({**GOOD, "SNH_STATE_DIR": str(tmp_path)})
    assert settings.db_url == f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}"


def test_parameter_prefix_and_kms_key_of_the_hub_stack():
    """The hub stack's ParameterPrefix and ParameterKeyArn (hub_config/infrastructure) reach
    the spawner; without a key, SSM's account-wide default key is used (None)."""
    assert HubSettings.from_environ(GOOD).parameter_kms_key_id is None
    arn = "arn:aws:kms:us-east-1:123456789012:key/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
    settings = HubSettings.from_environ(
        {**GOOD, "SNH_PARAMETER_PREFIX": "/notebooks/", "SNH_PARAMETER_KMS_KEY_ID": arn}
    )
    assert settings.parameter_prefix == "/notebooks"
    assert settings.parameter_kms_key_id == arn
    for key in ("alias/snh-parameters", "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"):
        env = {**GOOD, "SNH_PARAMETER_KMS_KEY_ID": key}
        assert HubSettings.from_environ(env).parameter_kms_key_id == key
