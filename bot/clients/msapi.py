"""A small JSON client for Microsoft Graph and Azure Resource Manager.

Both speak JSON over HTTPS with a bearer token, answer 429 with `Retry-After`, and fail
with `{"error": {"code", "message", ...}}`. `MicrosoftApi.request` retries 429, 5xx and
network errors within a bounded budget, then raises a `MicrosoftError`. Response bodies are
never put into exceptions or logs whole: only the error code and message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from bot.core import metrics
from bot.core.errors import MicrosoftError, Throttled, Unreachable

log = logging.getLogger(__name__)


class MicrosoftApi:
    service = "Microsoft"
    #: The `service` label of `veeam_sa_microsoft_requests_total`.
    metric_label = "microsoft"

    def __init__(
        self,
        base_url: str,
        http: httpx.Client,
        token: Callable[[], str],
        *,
        attempts: int = 5,
        max_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._token = token
        self._attempts = attempts
        self._max_wait = max_wait
        self._sleep = sleep
        #: Number of HTTP requests made (for the benchmarks' round-trip counts).
        self.calls = 0

    def url(self, path: str) -> str:
        return path if path.startswith("https://") else f"{self.base_url}{path}"

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 202, 204),
    ) -> httpx.Response:
        last: MicrosoftError | None = None
        for attempt in range(1, self._attempts + 1):
            send_headers = {"Authorization": f"Bearer {self._token()}", **(headers or {})}
            self.calls += 1
            try:
                response = self._http.request(
                    method, self.url(path), json=json, params=params, headers=send_headers
                )
            except httpx.HTTPError as exc:
                metrics.microsoft_request(self.metric_label, None)
                last = Unreachable(self.service, type(exc).__name__)
                wait = min(2.0 ** (attempt - 1), self._max_wait)
            else:
                metrics.microsoft_request(self.metric_label, response.status_code)
                if response.status_code in ok:
                    return response
                error = self.error(response)
                if response.status_code == 429:
                    wait = _retry_after(response, default=2.0**attempt)
                    last = Throttled(self.service, wait)
                elif response.status_code >= 500:
                    wait = _retry_after(response, default=min(2.0 ** (attempt - 1), self._max_wait))
                    last = Unreachable(self.service, error.code, status=response.status_code)
                else:
                    raise error
            if attempt == self._attempts or wait > self._max_wait:
                break
            log.info(
                "%s %s %s: %s; retrying in %.1fs",
                self.service,
                method,
                path.split("?")[0],
                last,
                wait,
            )
            self._sleep(wait)
        assert last is not None
        raise last

    def error(self, response: httpx.Response) -> MicrosoftError:
        code, message, request_id = "UnknownError", f"HTTP {response.status_code}", None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)[:500]
            details = [
                str(d.get("code"))
                for d in err.get("details") or []
                if isinstance(d, dict) and d.get("code")
            ]
            if details:
                message += f" [{', '.join(details)}]"
            inner = err.get("innerError") or err.get("innererror") or {}
            if isinstance(inner, dict):
                request_id = inner.get("request-id")
        request_id = (
            request_id
            or response.headers.get("request-id")
            or response.headers.get("x-ms-request-id")
        )
        return MicrosoftError(
            self.service, response.status_code, code, message, request_id=request_id
        )

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def paged(
        self, path: str, next_key: str, params: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Every item of a collection, following `@odata.nextLink` / `nextLink`."""
        items: list[dict[str, Any]] = []
        url: str | None = path
        first = True
        while url:
            body = self.get_json(url, params=params if first else None)
            first = False
            items.extend(body.get("value", []))
            url = body.get(next_key)
        return items


def _retry_after(response: httpx.Response, default: float) -> float:
    value = response.headers.get("Retry-After")
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        return default
