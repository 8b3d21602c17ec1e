"""Stream commands of the ``apex`` CLI (publish, record, status): registered on apex.cli.app."""

from __future__ import annotations

from apex.cli import app  # noqa: F401  (commands below register on it)
