"""Text that did not come from the bot reaches Slack escaped: no pings, no planted links.

Microsoft (display names, tenant names, error descriptions) and people (descriptions) can
put Slack's control sequences in text; the bot escapes `&`, `<` and `>` before any of it
enters mrkdwn, as Slack's formatting reference asks.
"""

from __future__ import annotations

import json

from tests.fakes.microsoft import DEFAULT_SUBSCRIPTIONS, DEFAULT_TENANT_ID, MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.harness import Bot
from tests.test_provision import sign_in

SUB = DEFAULT_SUBSCRIPTIONS[0][0]
MALLORY = "mallory@contoso.onmicrosoft.com"
HOSTILE = "<!channel> Mallory <https://evil.example|click> & co"


def everything_posted(slack: SlackDouble) -> str:
    return "\n".join(
        json.dumps({k: c.args.get(k) for k in ("text", "blocks")})
        for c in slack.calls
        if c.method in ("chat.postMessage", "chat.update", "chat.postEphemeral")
    )


def test_hostile_names_and_descriptions_reach_slack_escaped(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    ms.add_user(MALLORY, name=HOSTILE, directory_roles=["62e90394-69f5-4237-9190-012177145e10"])
    ms.grant(MALLORY, SUB, "Owner")
    ms.tenants[DEFAULT_TENANT_ID].display_name = "<!here> Contoso <https://evil.example|x>"
    # Slack hands the command text over with entities for &, < and >
    sign_in(
        bot,
        f'create hostile --subscription {SUB} --description "&lt;!here&gt; R&amp;D"',
        user=MALLORY,
    )
    bot.wait_state("hostile", "done", timeout=30)
    bot.wait_thread("hostile", "is ready")
    posted = everything_posted(slack)
    for raw in ("<!channel>", "<!here>", "<https://evil.example"):
        assert raw not in posted, raw
    assert "&lt;!channel&gt; Mallory &lt;https://evil.example|click&gt; &amp; co" in posted
    assert "&lt;!here&gt; Contoso" in posted
    assert "&lt;!here&gt; R&amp;D" in posted  # the description, as typed, escaped once
    # the bot's own mentions still work
    assert "<@U0ADMIN>" in posted
