"""The slash-command grammar: text in, a `Command` out, or a `CommandError` that says why.

/veeam-sa create NAME [--subscription ID]... [--description TEXT] [--credential secret|certificate]
                      [--roles builtin|least-privilege] [--tenant ID|DOMAIN]
/veeam-sa create NAME --management-group ID [--description TEXT] ...
/veeam-sa list
/veeam-sa show NAME
/veeam-sa renew NAME
/veeam-sa retire NAME
/veeam-sa cancel
/veeam-sa sync NAME
/veeam-sa import
/veeam-sa help

Bare `/veeam-sa`, and `create` without a NAME, mean "open the create form": the `Command`
is `create` with no name (and the options given, to fill the form in). `form_command`
checks the form's fields by the same rules.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from bot.core.config import CREDENTIALS, GUID_RE, ROLE_MODES
from bot.core.errors import CommandError

MAX_TEXT = 4000
MAX_NAME = 255
#: Matched with `fullmatch`: `$` alone would accept a name with a final newline.
NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
#: Azure's rule for a management group id: at most 90 characters, letters, digits, `-`, `_`,
#: `(`, `)` and `.`, not ending in a period ("Management groups - naming rules").
GROUP_RE = re.compile(r"[A-Za-z0-9_().-]{0,89}[A-Za-z0-9_()-]")
#: A tenant's domain name (e.g. `contoso.onmicrosoft.com`): DNS labels, at least two.
DOMAIN_RE = re.compile(
    r"(?=.{3,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
SUBCOMMANDS = ("create", "list", "show", "renew", "retire", "cancel", "sync", "import", "help")

USAGE = {
    "create": (
        "/veeam-sa create NAME [--subscription ID]... [--description TEXT]"
        " [--credential secret|certificate] [--roles builtin|least-privilege]"
        " [--tenant ID|DOMAIN] (or --management-group ID instead of --subscription)"
    ),
    "list": "/veeam-sa list",
    "show": "/veeam-sa show NAME",
    "renew": "/veeam-sa renew NAME",
    "retire": "/veeam-sa retire NAME",
    "cancel": "/veeam-sa cancel",
    "sync": "/veeam-sa sync NAME",
    "import": "/veeam-sa import",
    "help": "/veeam-sa help",
}

# Slack clients turn straight quotes into typographic ones; read both.
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


@dataclass(frozen=True)
class Command:
    verb: str
    name: str | None = None
    subscriptions: tuple[str, ...] = field(default_factory=tuple)
    description: str | None = None
    #: `secret` or `certificate`; None: `VEEAM_SA_CREDENTIAL` decides.
    credential: str | None = None
    #: "builtin" or "least-privilege" when `--roles` was given; None: the configured default.
    roles: str | None = None
    #: `--management-group`: role assignments at that group's scope instead of subscriptions.
    management_group: str | None = None
    #: `--tenant`: the tenant's id or one of its domain names (lower case); None: the tenant
    #: the account signs in to, or the person's choice when it reaches several.
    tenant: str | None = None


def validate_tenant(value: str) -> str:
    """A tenant id (GUID) or domain name, lower case; raises `CommandError` otherwise."""
    value = value.strip()
    if GUID_RE.fullmatch(value) or DOMAIN_RE.fullmatch(value):
        return value.lower()
    raise CommandError(
        f"`{_clip(value)}` is not a tenant: give its id (a GUID) or one of its domain names "
        "(such as contoso.onmicrosoft.com)."
    )


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME:
        raise CommandError(
            f"The name is {len(name)} characters long; Veeam allows at most {MAX_NAME}."
        )
    if not NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not NAME_RE.fullmatch(c)})
        shown = " ".join(repr(c) for c in bad[:5])
        raise CommandError(
            f"`{_clip(name)}` is not a valid name: use Latin letters, digits, `_` and `-` only "
            f"(found {shown})."
        )
    return name


def _clip(text: str, limit: int = 60) -> str:
    """A piece of the command, to quote back. Slack sends `<`, `>` and `&` as entities;
    any raw `<`/`>` left (a client that did not) is escaped, so nothing quoted back can
    become a mention or a link."""
    text = text.replace("`", "'").replace("<", "&lt;").replace(">", "&gt;")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _usage_error(verb: str, problem: str) -> CommandError:
    return CommandError(f"{problem}\nUsage: `{USAGE[verb]}`")


def parse(text: str) -> Command:
    if len(text) > MAX_TEXT:
        raise CommandError(f"That command is {len(text)} characters long; the limit is {MAX_TEXT}.")
    try:
        words = shlex.split(text.translate(_QUOTES))
    except ValueError as exc:
        raise CommandError(f"I could not read the quoting in that command ({exc}).") from None
    if not words:
        return Command("create")
    verb, rest = words[0].lower(), words[1:]
    if verb not in SUBCOMMANDS:
        raise CommandError(
            f"`{_clip(words[0])}` is not a sub-command I know. Try one of: "
            + ", ".join(f"`{s}`" for s in SUBCOMMANDS)
            + "."
        )
    if verb in ("list", "cancel", "import", "help"):
        if rest:
            raise _usage_error(
                verb, f"`{verb}` takes no arguments (got `{_clip(' '.join(rest))}`)."
            )
        return Command(verb)
    if verb in ("show", "renew", "retire", "sync"):
        if len(rest) != 1:
            raise _usage_error(verb, f"`{verb}` takes exactly one NAME.")
        if rest[0].startswith("-"):
            raise _usage_error(verb, f"`{verb}` takes no options (got `{_clip(rest[0])}`).")
        return Command(verb, name=validate_name(rest[0]))
    return _parse_create(rest)


def _parse_create(words: list[str]) -> Command:
    name: str | None = None
    subscriptions: list[str] = []
    description: str | None = None
    credential: str | None = None
    roles: str | None = None
    group: str | None = None
    tenant: str | None = None
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            flag, eq, inline = word.partition("=")
            if flag not in (
                "--subscription",
                "--description",
                "--credential",
                "--roles",
                "--management-group",
                "--tenant",
            ):
                raise _usage_error("create", f"`{_clip(flag)}` is not an option of `create`.")
            if eq:
                value = inline
            elif i + 1 < len(words) and not words[i + 1].startswith("--"):
                i += 1
                value = words[i]
            else:
                raise _usage_error("create", f"`{flag}` needs a value.")
            if flag == "--credential":
                if credential is not None:
                    raise _usage_error("create", "`--credential` is given twice.")
                if value.lower() not in CREDENTIALS:
                    raise _usage_error(
                        "create",
                        f"`--credential` is `secret` or `certificate`, not `{_clip(value)}`.",
                    )
                credential = value.lower()
            elif flag == "--subscription":
                for part in filter(None, (p.strip() for p in value.split(","))):
                    if not GUID_RE.fullmatch(part):
                        raise _usage_error(
                            "create",
                            f"`{_clip(part)}` is not a subscription id "
                            "(a GUID such as 11111111-2222-3333-4444-555555555555).",
                        )
                    if part.lower() not in subscriptions:
                        subscriptions.append(part.lower())
            elif flag == "--management-group":
                if group is not None:
                    raise _usage_error("create", "`--management-group` is given twice.")
                if not GROUP_RE.fullmatch(value):
                    raise _usage_error(
                        "create",
                        f"`{_clip(value)}` is not a management group id (at most 90 letters, "
                        "digits, `-`, `_`, `(`, `)` and `.`; not ending in a period). Use the "
                        "group's id, not its display name.",
                    )
                group = value
            elif flag == "--tenant":
                if tenant is not None:
                    raise _usage_error("create", "`--tenant` is given twice.")
                try:
                    tenant = validate_tenant(value)
                except CommandError as exc:
                    raise _usage_error("create", str(exc)) from None
            elif flag == "--roles":
                if roles is not None:
                    raise _usage_error("create", "`--roles` is given twice.")
                if value.lower() not in ROLE_MODES:
                    raise _usage_error(
                        "create",
                        f"`--roles` takes `builtin` or `least-privilege` (got `{_clip(value)}`).",
                    )
                roles = value.lower()
            else:
                if description is not None:
                    raise _usage_error("create", "`--description` is given twice.")
                # Slack hands the command text over with &, < and > as entities: keep the
                # text the person typed (it is escaped again wherever it is shown)
                value = value.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
                if len(value) > 1024:
                    raise _usage_error("create", "The description is longer than 1024 characters.")
                description = value
        elif word.startswith("-") and len(word) > 1:
            raise _usage_error("create", f"`{_clip(word)}` is not an option of `create`.")
        elif name is None:
            name = validate_name(word)
        else:
            raise _usage_error(
                "create",
                f"`create` takes one NAME, but `{_clip(word)}` came after `{name}`"
                " (quote a description with spaces).",
            )
        i += 1
    if group is not None and subscriptions:
        raise _usage_error(
            "create",
            "Give either `--management-group` or `--subscription`, not both: an account for a "
            "management group covers the group's subscriptions.",
        )
    return Command(
        "create",
        name=name,
        subscriptions=tuple(subscriptions),
        description=description,
        credential=credential,
        roles=roles,
        management_group=group,
        tenant=tenant,
    )


class FieldErrors(CommandError):
    """What is wrong with the create form, per field (the form's block ids)."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(" ".join(fields.values()))
        self.fields = fields


def _plain(message: str) -> str:
    """A grammar message for a plain-text surface (a form's field errors show no mrkdwn)."""
    return message.replace("`", "")


def form_command(
    name: str | None,
    description: str | None,
    subscriptions: str | None,
    tenant: str | None = None,
) -> Command:
    """The create form's fields as a `create` command, by the command's own rules; raises
    `FieldErrors` naming each bad field ("name", "description", "subscriptions", "tenant")."""
    errors: dict[str, str] = {}
    name = (name or "").strip()
    if not name:
        errors["name"] = "Enter a name for the service account."
    else:
        try:
            validate_name(name)
        except CommandError as exc:
            errors["name"] = _plain(str(exc))
    text = (description or "").strip() or None
    if text is not None and len(text) > 1024:
        errors["description"] = f"The description is {len(text)} characters long; the limit is 1024."
    chosen: list[str] = []
    for part in re.split(r"[\s,;]+", subscriptions or ""):
        if not part:
            continue
        if not GUID_RE.fullmatch(part):
            errors["subscriptions"] = (
                f"{_clip(part).replace('`', '')} is not a subscription id (a GUID such as "
                "11111111-2222-3333-4444-555555555555). Leave the field empty to choose after "
                "sign-in."
            )
            break
        if part.lower() not in chosen:
            chosen.append(part.lower())
    chosen_tenant: str | None = None
    if (tenant or "").strip():
        try:
            chosen_tenant = validate_tenant(str(tenant))
        except CommandError as exc:
            errors["tenant"] = _plain(str(exc))
    if errors:
        raise FieldErrors(errors)
    return Command(
        "create",
        name=name,
        subscriptions=tuple(chosen),
        description=text,
        tenant=chosen_tenant,
    )
