"""Apex: the execution layer after a signal engine. The CLI lives in apex.cli."""

__version__ = "0.1.0"
