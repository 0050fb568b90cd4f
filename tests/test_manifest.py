"""The Slack app manifest is valid against Slack's schema and asks only for what the bot uses."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifest.yml"
SCHEMA = ROOT / "schemas" / "slack-app-manifest.schema.json"

# Every bot scope, with the feature that needs it. Adding a scope to manifest.yml without
# adding it here (with a reason) fails test_bot_scopes_are_exactly_the_ones_used.
EXPECTED_BOT_SCOPES = {
    "commands",  # /veeam-sa
    "chat:write",  # parent messages, status updates, thread replies, expiry alerts
    "chat:write.public",  # posting to channels the bot has not joined
    "im:write",  # conversations.open for the device-code DM fallback
    "users:read",  # users.info
    "users:read.email",  # VEEAM_SA_REQUIRE_EMAIL_MATCH compares the profile email
    "usergroups:read",  # usergroups.users.list for admin groups in VEEAM_SA_ADMINS
}


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@pytest.fixture(scope="module")
def manifest() -> dict:
    data = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _errors(validator: Draft7Validator, document: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_schema_licence_is_shipped() -> None:
    licence = (ROOT / "schemas" / "LICENSE.slack-manifest-schema").read_text(encoding="utf-8")
    assert "MIT License" in licence
    assert "Slack Technologies" in licence


def test_manifest_is_valid(validator: Draft7Validator, manifest: dict) -> None:
    assert _errors(validator, manifest) == []


def test_display_information(manifest: dict) -> None:
    info = manifest["display_information"]
    assert info["name"] == "veeam-sa"
    assert "Veeam Backup for Microsoft Azure" in info["description"]


def test_slash_command(manifest: dict) -> None:
    commands = {c["command"]: c for c in manifest["features"]["slash_commands"]}
    assert "/veeam-sa" in commands
    command = commands["/veeam-sa"]
    assert command["should_escape"] is False
    for word in ("create", "list", "renew", "cancel", "help"):
        assert word in command["usage_hint"]


def test_bot_user(manifest: dict) -> None:
    bot_user = manifest["features"]["bot_user"]
    assert bot_user["display_name"] == "veeam-sa"
    assert bot_user["always_online"] is True


def test_socket_mode_and_interactivity(manifest: dict) -> None:
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"]["is_enabled"] is True
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False


def test_bot_scopes_are_exactly_the_ones_used(manifest: dict) -> None:
    scopes = manifest["oauth_config"]["scopes"]
    bot = scopes["bot"]
    assert len(bot) == len(set(bot)), "duplicate scope"
    assert set(bot) == EXPECTED_BOT_SCOPES
    # The bot acts only as itself: no user-token scopes.
    assert set(scopes) == {"bot"}


@pytest.mark.parametrize(
    ("label", "breakage"),
    [
        ("scope not a string", lambda m: m["oauth_config"]["scopes"]["bot"].append(42)),
        ("no app name", lambda m: m["display_information"].pop("name")),
        (
            "command without slash",
            lambda m: m["features"]["slash_commands"][0].update(command="veeam-sa"),
        ),
        ("unknown setting", lambda m: m["settings"].update(socket_mode=True)),
        ("name too long", lambda m: m["display_information"].update(name="v" * 36)),
    ],
)
def test_broken_manifest_is_rejected(
    validator: Draft7Validator, manifest: dict, label: str, breakage
) -> None:
    broken = copy.deepcopy(manifest)
    breakage(broken)
    assert _errors(validator, broken), f"schema accepted a manifest with {label}"


def test_home_tab_and_its_event(manifest: dict) -> None:
    # The App Home is published when someone opens it: the tab must be enabled (views.publish
    # answers not_enabled otherwise) and the app_home_opened bot event subscribed.
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert manifest["settings"]["event_subscriptions"]["bot_events"] == ["app_home_opened"]
