from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.config import BUILTIN_ROLES, load_config
from bot.core.errors import ConfigError

BASE = {
    "SLACK_BOT_TOKEN": "xoxb-1-2-abc",
    "SLACK_SIGNING_SECRET": "s3cr3t",
    "VEEAM_SA_ADMINS": "U0ADMIN,S0GROUP",
}


def load(**overrides: str):
    env = {**BASE, **overrides}
    return load_config({k: v for k, v in env.items() if v is not None}, dotenv=None)


def test_defaults_follow_the_contract() -> None:
    config = load()
    assert config.slack_api_url == "https://slack.com/api/"
    assert config.port == 3000
    assert config.db_path == Path("./veeam-sa.db")
    assert config.authority_host == "https://login.microsoftonline.com"
    assert config.graph_url == "https://graph.microsoft.com"
    assert config.arm_url == "https://management.azure.com"
    assert config.client_id == "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    assert config.tenant == "organizations"
    assert [r.name for r in config.roles] == [
        "Contributor",
        "Key Vault Crypto User",
        "Storage Queue Data Contributor",
    ]
    assert config.secret_days == 365
    assert config.warn_days == (30, 14, 7, 1)
    assert not config.socket_mode
    assert config.admin_users == {"U0ADMIN"} and config.admin_groups == {"S0GROUP"}
    assert config.graph_scope == "https://graph.microsoft.com/.default"
    assert config.authority == "https://login.microsoftonline.com/organizations"


@pytest.mark.parametrize(
    ("cloud", "login", "graph", "arm"),
    [
        (
            "AzureUSGovernment",
            "login.microsoftonline.us",
            "graph.microsoft.us",
            "management.usgovcloudapi.net",
        ),
        (
            "AzureChinaCloud",
            "login.chinacloudapi.cn",
            "microsoftgraph.chinacloudapi.cn",
            "management.chinacloudapi.cn",
        ),
    ],
)
def test_sovereign_clouds_set_the_three_urls(cloud: str, login: str, graph: str, arm: str) -> None:
    config = load(VEEAM_SA_CLOUD=cloud)
    assert config.authority_host == f"https://{login}"
    assert config.graph_url == f"https://{graph}"
    assert config.arm_url == f"https://{arm}"


def test_explicit_urls_override_the_cloud() -> None:
    config = load(VEEAM_SA_CLOUD="AzureChinaCloud", VEEAM_SA_GRAPH_URL="https://127.0.0.1:8443/")
    assert config.graph_url == "https://127.0.0.1:8443"
    assert config.arm_url == "https://management.chinacloudapi.cn"


def test_socket_mode_needs_no_signing_secret() -> None:
    config = load(SLACK_SIGNING_SECRET=None, SLACK_APP_TOKEN="xapp-1-abc")  # type: ignore[arg-type]
    assert config.socket_mode


def test_roles_accept_names_and_guids() -> None:
    config = load(
        VEEAM_SA_ROLES="reader, 8e3af657-a8ff-443c-a75c-2fe8c4bcb635, 11111111-2222-3333-4444-555555555555"
    )
    assert [(r.name, r.definition_id) for r in config.roles] == [
        ("Reader", BUILTIN_ROLES["Reader"]),
        ("Owner", BUILTIN_ROLES["Owner"]),
        ("11111111-2222-3333-4444-555555555555", "11111111-2222-3333-4444-555555555555"),
    ]


def test_warn_days_are_sorted_and_deduplicated() -> None:
    assert load(VEEAM_SA_WARN_DAYS="7, 30,7,1").warn_days == (30, 7, 1)


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"SLACK_BOT_TOKEN": None}, "SLACK_BOT_TOKEN"),
        ({"SLACK_BOT_TOKEN": "xoxp-user"}, "SLACK_BOT_TOKEN"),
        ({"SLACK_SIGNING_SECRET": None}, "SLACK_SIGNING_SECRET"),
        ({"SLACK_APP_TOKEN": "xoxb-wrong"}, "SLACK_APP_TOKEN"),
        ({"VEEAM_SA_ADMINS": None}, "VEEAM_SA_ADMINS"),
        ({"VEEAM_SA_ADMINS": "alice"}, "VEEAM_SA_ADMINS"),
        ({"VEEAM_SA_ADMINS": " , "}, "VEEAM_SA_ADMINS"),
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"SLACK_API_URL": "slack.com"}, "SLACK_API_URL"),
        ({"VEEAM_SA_ENCRYPTION_KEY": "not-a-key"}, "VEEAM_SA_ENCRYPTION_KEY"),
        ({"VEEAM_SA_ALERT_CHANNEL": "#ops"}, "VEEAM_SA_ALERT_CHANNEL"),
        ({"VEEAM_SA_CLOUD": "Azure"}, "VEEAM_SA_CLOUD"),
        ({"VEEAM_SA_AUTHORITY_HOST": "http://login.example"}, "VEEAM_SA_AUTHORITY_HOST"),
        ({"VEEAM_SA_CLIENT_ID": "azure-cli"}, "VEEAM_SA_CLIENT_ID"),
        ({"VEEAM_SA_TENANT": "not a tenant"}, "VEEAM_SA_TENANT"),
        ({"VEEAM_SA_ROLES": "Janitor"}, "VEEAM_SA_ROLES"),
        ({"VEEAM_SA_SECRET_DAYS": "0"}, "VEEAM_SA_SECRET_DAYS"),
        ({"VEEAM_SA_WARN_DAYS": "30,soon"}, "VEEAM_SA_WARN_DAYS"),
        ({"VEEAM_URL": "https://vb.example"}, "VEEAM_USERNAME"),
        ({"SSL_CERT_FILE": "/nonexistent/ca.pem"}, "SSL_CERT_FILE"),
        ({"VEEAM_SA_ALLOW_PERSONAL_ACCOUNTS": "maybe"}, "VEEAM_SA_ALLOW_PERSONAL_ACCOUNTS"),
    ],
)
def test_bad_values_name_the_variable_in_one_line(
    overrides: dict[str, str | None], variable: str
) -> None:
    env = {**BASE, **overrides}
    with pytest.raises(ConfigError) as info:
        load_config({k: v for k, v in env.items() if v is not None}, dotenv=None)
    message = str(info.value)
    assert message.startswith(variable)
    assert "\n" not in message


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SLACK_BOT_TOKEN=xoxb-from-file\nVEEAM_SA_ADMINS=U0FILE\nPORT=4000\n")
    config = load_config({"SLACK_SIGNING_SECRET": "x", "PORT": "5000"}, dotenv=dotenv)
    assert config.slack_bot_token == "xoxb-from-file"
    assert config.admins == ("U0FILE",)
    assert config.port == 5000


def test_the_default_credential_is_a_secret_or_a_certificate() -> None:
    assert load().credential == "secret"
    assert load(VEEAM_SA_CREDENTIAL="Certificate").credential == "certificate"
    with pytest.raises(ConfigError) as info:
        load(VEEAM_SA_CREDENTIAL="password")
    assert "VEEAM_SA_CREDENTIAL" in str(info.value)
