"""Secrets out of what is shown: a password inside a URL, and the value of any setting whose
name says it is a secret. Pure; `apex config show` and the run's start line use it."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_SECRET_NAME = re.compile(r"(secret|password|passphrase|token|api_key|apikey|credential)", re.I)
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*_[A-Z0-9_]+$")  # an environment variable's name, not its value
_URL_PASSWORD = re.compile(r"^(?P<head>[a-z][a-z0-9+.-]*://[^:/@]*:)(?P<password>[^@]*)@", re.I)


def url(text: str) -> str:
    """``scheme://user:password@host`` with the password masked; anything else as it is."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)


def masked(value: Any, name: str = "") -> Any:
    """``value`` (a settings tree of dicts, lists and scalars) with every secret masked. A
    secret-named setting that holds an environment variable's name (``OKX_API_KEY``) shows
    it: the name tells where the secret comes from and is none itself."""
    if isinstance(value, dict):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v, name) for v in value]
    if isinstance(value, str):
        if _SECRET_NAME.search(name) and value and not _ENV_NAME.match(value):
            return MASK
        return url(value)
    return value
