"""Microsoft Graph v1.0: the calls the bot makes, each a method returning plain data."""

from __future__ import annotations

from bot.msapi import MicrosoftApi


class GraphClient(MicrosoftApi):
    service = "Microsoft Graph"

    def organization_name(self) -> str | None:
        orgs = self.get_json("/v1.0/organization").get("value", [])
        return str(orgs[0].get("displayName")) if orgs else None
