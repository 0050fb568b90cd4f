from __future__ import annotations

import pytest

from bot.core.errors import CommandError
from bot.slack.grammar import Command, FieldErrors, form_command, parse

SUB = "11111111-2222-3333-4444-555555555555"
SUB2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Bare, or `create` without a NAME: the create form, filled in with what was named.
        ("", Command("create")),
        ("create", Command("create")),
        (f"create --subscription {SUB}", Command("create", subscriptions=(SUB,))),
        ("  help ", Command("help")),
        ("LIST", Command("list")),
        ("cancel", Command("cancel")),
        ("renew prod-backup", Command("renew", name="prod-backup")),
        ("show prod_1", Command("show", name="prod_1")),
        ("create prod-backup", Command("create", name="prod-backup")),
        (
            f"create prod --subscription {SUB} --subscription={SUB2.upper()}",
            Command("create", name="prod", subscriptions=(SUB, SUB2)),
        ),
        (
            f"create prod --subscription {SUB},{SUB}",
            Command("create", name="prod", subscriptions=(SUB,)),
        ),
        (
            "create prod --description \u201cnightly DR copies\u201d",
            Command("create", name="prod", description="nightly DR copies"),
        ),
        ("create --description 'x y' prod", Command("create", name="prod", description="x y")),
        (
            "create prod --credential Certificate",
            Command("create", name="prod", credential="certificate"),
        ),
        ("create prod --credential=secret", Command("create", name="prod", credential="secret")),
    ],
)
def test_valid_commands(text: str, expected: Command) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("frobnicate", "not a sub-command"),
        ("create prod!", "not a valid name"),
        ("create " + "a" * 256, "at most 255"),
        ("create prod --subscription nope", "not a subscription id"),
        ("create prod --subscription", "needs a value"),
        ("create prod --region westeurope", "not an option"),
        ("create prod -s " + SUB, "not an option"),
        ("create prod extra", "takes one NAME"),
        ("create prod --description 'unterminated", "quoting"),
        ("create prod --description a --description b", "given twice"),
        ("renew", "exactly one NAME"),
        ("renew a b", "exactly one NAME"),
        ("list all", "takes no arguments"),
        ("x" * 4001, "limit is 4000"),
        ("create pr\u00f6d", "not a valid name"),
        ("create prod --credential password", "`secret` or `certificate`"),
        ("create prod --credential", "needs a value"),
        ("create prod --credential secret --credential certificate", "given twice"),
    ],
)
def test_bad_commands_say_why(text: str, fragment: str) -> None:
    with pytest.raises(CommandError) as info:
        parse(text)
    assert fragment in str(info.value)


def test_the_form_is_checked_by_the_commands_rules() -> None:
    assert form_command(" prod ", " nightly ", f"{SUB}, {SUB2.upper()}\n{SUB}") == Command(
        "create", name="prod", subscriptions=(SUB, SUB2), description="nightly"
    )
    assert form_command("prod", None, None) == Command("create", name="prod")
    with pytest.raises(FieldErrors) as info:
        form_command("pr\u00f6d", "d" * 1025, "nope")
    fields = info.value.fields
    assert set(fields) == {"name", "description", "subscriptions"}
    assert "not a valid name" in fields["name"] and "`" not in fields["name"]
    assert "1024" in fields["description"]
    assert "nope is not a subscription id" in fields["subscriptions"]
    with pytest.raises(FieldErrors) as info:
        form_command("a" * 256, "", "")
    assert "at most 255" in info.value.fields["name"]
    with pytest.raises(FieldErrors) as info:
        form_command("  ", None, None)
    assert set(info.value.fields) == {"name"}
