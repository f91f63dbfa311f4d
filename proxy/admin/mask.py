"""Secrets never leave the console: every request, response, event and error it shows goes through a
:class:`Masker` first.

Three layers, because a secret can hide in several forms:
- every configured secret value (write keys, every ``SecretStr`` in a destination's parsed settings,
  webhook header values and signing secrets, the admin token) is replaced wherever it appears as
  text, also in its JSON-escaped and base64 forms (``Basic base64(key:)`` headers);
- header values whose name says they carry credentials (Authorization, *key*, *token*, *secret*,
  *signature*, Cookie...) are masked whatever they hold;
- query parameters named like credentials (destinations.base._SECRET_QUERY: GA4's api_secret...).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from pydantic import BaseModel, SecretStr

from destinations.base import _SECRET_QUERY
from proxy.config import Config

MASK = "***"
_SECRET_HEADER = re.compile(r"auth|key|token|secret|signature|password|cookie|session|credential", re.IGNORECASE)


def secrets_of(value: Any) -> list[str]:
    """Every SecretStr value inside a (nested) pydantic model, mapping or list."""
    out: list[str] = []
    if isinstance(value, SecretStr):
        out.append(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            out += secrets_of(getattr(value, name, None))
    elif isinstance(value, Mapping):
        for v in value.values():
            out += secrets_of(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            out += secrets_of(v)
    return out


def config_secrets(config: Config) -> list[str]:
    found: list[str] = []
    for source in config.sources:
        found += source.write_keys
    for dest in config.destinations:
        try:
            found += secrets_of(dest.parsed_settings)
        except Exception:  # invalid settings never got this far (load_config validated them)
            pass
    if config.admin is not None:
        found.append(config.admin.token.get_secret_value())
    return found


class Masker:
    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for s in secrets:
            if not s or len(s) < 4:  # a 1-3 character "secret" would mask half the page; nothing real is that short
                continue
            forms.add(s)
            forms.add(orjson.dumps(s).decode()[1:-1])
            for combo in (f"{s}:", f":{s}", s):
                forms.add(base64.b64encode(combo.encode()).decode().rstrip("="))
        # longest first, so a secret containing another is masked whole
        self._forms = sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(f) for f in self._forms)) if self._forms else None

    def text(self, value: str | None) -> str | None:
        if value is None:
            return None
        if self._pattern is not None:
            value = self._pattern.sub(MASK, value)
        return value

    def url(self, url: str) -> str:
        return self.text(_SECRET_QUERY.sub(r"\1" + MASK, url)) or ""

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {k: (MASK if _SECRET_HEADER.search(k) else self.text(str(v)) or "") for k, v in headers.items()}

    def body(self, body: bytes | None, limit: int = 65536) -> str | None:
        if body is None:
            return None
        text = body[:limit].decode("utf-8", "replace")
        if len(body) > limit:
            text += f"… ({len(body) - limit} more bytes)"
        return self.text(text)

    def json(self, value: Any) -> Any:
        """A JSON-able value with every string masked (keys included), and writeKey fields removed."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.json(v) for k, v in value.items() if k != "writeKey"}
        if isinstance(value, (list, tuple)):
            return [self.json(v) for v in value]
        return value
