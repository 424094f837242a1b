"""The hub's configuration: the embedded default and the documented production alternatives
(OIDC, LDAP, LocalProcessSpawner, KubeSpawner) load into JupyterHub and their classes accept
them.  No hub is started here (tests/test_hub_browser.py starts real ones)."""

from __future__ import annotations

from pathlib import Path

import pytest
from traitlets.config import Config

from opencdms_kernel.settings import PROJECT_FOLDER

CONFIG = PROJECT_FOLDER / "jupyterhub_config.py"

OIDC_EXTRA = """
c.GenericOAuthenticator.client_id = "opencdms"
c.GenericOAuthenticator.client_secret = "from-the-provider"
c.GenericOAuthenticator.oauth_callback_url = "https://hub.example.org/hub/oauth_callback"
c.GenericOAuthenticator.authorize_url = "https://idp.example.org/realms/met/protocol/openid-connect/auth"
c.GenericOAuthenticator.token_url = "https://idp.example.org/realms/met/protocol/openid-connect/token"
c.GenericOAuthenticator.userdata_url = "https://idp.example.org/realms/met/protocol/openid-connect/userinfo"
"""
LDAP_EXTRA = """
c.LDAPAuthenticator.server_address = "ldap.example.org"
c.LDAPAuthenticator.bind_dn_template = ["uid={username},ou=people,dc=example,dc=org"]
"""
KUBE_EXTRA = """
c.KubeSpawner.image = "registry.example.org/opencdms/workbench:1"
c.KubeSpawner.namespace = "opencdms"
"""


def load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Config:
    """JupyterHub's config object after running jupyterhub_config.py with these settings."""
    from jupyterhub.app import JupyterHub

    monkeypatch.setenv("OPENCDMS_HOME", str(tmp_path))
    monkeypatch.setenv("OPENCDMS_HUB_SERVICES", "[]")
    for name, value in env.items():
        monkeypatch.setenv(f"OPENCDMS_{name.upper()}", value)
    app = JupyterHub()
    app.load_config_file(str(CONFIG))
    return app.config


def test_the_default_is_native_sign_up_with_approval_lockout_and_roles(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from nativeauthenticator import NativeAuthenticator
    from nativeauthenticator.handlers import LoginHandler

    config = load(monkeypatch, tmp_path)
    assert config.JupyterHub.authenticator_class == "native"
    assert config.Authenticator.allow_all is True
    assert hasattr(LoginHandler, "statsd")  # the JupyterHub 6 shim
    native = NativeAuthenticator(config=config, add_new_table=False)
    assert native.enable_signup and not native.open_signup
    assert native.allowed_failed_logins == 3 and native.minimum_password_length >= 12
    assert not native.is_password_strong("password") and native.is_password_strong("Tmax-and-Tmin-2024")
    roles = {role["name"]: role for role in config.JupyterHub.load_roles}
    assert roles["opencdms-clerk"]["groups"] == ["clerk"]
    assert "custom:opencdms:execute" not in roles["opencdms-clerk"]["scopes"]
    assert "custom:opencdms:execute" in roles["opencdms-scientist"]["scopes"]
    assert set(config.JupyterHub.load_groups) == {"admin", "scientist", "qc-reviewer", "clerk"}
    assert config.JupyterHub.spawner_class.endswith("SimpleLocalProcessSpawner")
    assert "OPENCDMS_DATABASE_URL" not in config.Spawner.env_keep
    assert config.JupyterHub.cleanup_servers is False  # users' servers outlive a hub restart


def test_oidc_is_configured_from_the_sites_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from oauthenticator.generic import GenericOAuthenticator

    extra = tmp_path / "site.py"
    extra.write_text(OIDC_EXTRA)
    config = load(monkeypatch, tmp_path, hub_authenticator="oauth", hub_extra_config=str(extra))
    authenticator = GenericOAuthenticator(config=config)
    assert authenticator.manage_groups is True
    assert authenticator.admin_groups == {"admin"}
    assert authenticator.allowed_groups == {"admin", "scientist", "qc-reviewer", "clerk"}
    assert authenticator.token_url.startswith("https://idp.example.org/")


def test_ldap_is_configured_from_the_sites_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ldapauthenticator import LDAPAuthenticator

    extra = tmp_path / "site.py"
    extra.write_text(LDAP_EXTRA)
    config = load(monkeypatch, tmp_path, hub_authenticator="ldap", hub_extra_config=str(extra))
    authenticator = LDAPAuthenticator(config=config)
    assert authenticator.server_address == "ldap.example.org"
    assert authenticator.use_ssl is True


def test_local_and_kubernetes_spawners_take_the_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kubespawner import KubeSpawner

    config = load(monkeypatch, tmp_path, hub_spawner="local")
    assert config.JupyterHub.spawner_class == "jupyterhub.spawner.LocalProcessSpawner"
    extra = tmp_path / "site.py"
    extra.write_text(KUBE_EXTRA)
    config = load(monkeypatch, tmp_path, hub_spawner="kube", hub_extra_config=str(extra))
    assert config.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    # An instance needs a cluster to talk to: check that every setting is one of its options.
    options = KubeSpawner.class_traits(config=True)
    for name in {**config.KubeSpawner, **config.Spawner}:
        assert name in options, name
    assert config.Spawner.cmd == ["jupyterhub-singleuser"]
    assert "--allow-root" not in config.Spawner.args


def test_a_missing_site_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from opencdms_kernel.errors import ParameterError

    with pytest.raises(ParameterError, match="hub_extra_config"):
        load(monkeypatch, tmp_path, hub_extra_config=str(tmp_path / "missing.py"))
