"""What every doctor check returns, and the constants they share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

OK = "✓"
FAIL = "✗"

NETWORK_FIX = "check network/proxy/SSL_CERT_FILE"

#: The bot scopes of manifest.yml, for installs that do not ship the manifest (the wheel and
#: the Docker image hold only the packages). A test keeps the two lists equal.
MANIFEST_BOT_SCOPES: tuple[str, ...] = (
    "commands",
    "chat:write",
    "chat:write.public",
    "im:write",
    "users:read",
    "users:read.email",
    "usergroups:read",
)
#: manifest.yml at the top of the source tree (bot/ops/doctor/ is three folders below it).
MANIFEST_PATH = Path(__file__).resolve().parents[3] / "manifest.yml"


@dataclass(frozen=True)
class Result:
    """One check's verdict; `details` are extra indented lines printed under it."""

    name: str
    ok: bool
    text: str
    fix: str = ""
    details: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        head = f"{OK if self.ok else FAIL} {self.name}: {self.text}"
        if not self.ok and self.fix:
            head += f" — {self.fix}"
        return [head, *(f"    {line}" for line in self.details)]
