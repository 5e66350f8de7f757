"""Changing definitions under a running database (floor 2): what differs (``plan``), and making it so
in one transaction, online (``apply_async`` / ``apply``, generated)."""

from .plan import ADDITIVE, DESTRUCTIVE, NOTE, Change, Live, LiveTable, Plan, describe, make_plan

__all__ = ["ADDITIVE", "DESTRUCTIVE", "NOTE", "Change", "Live", "LiveTable", "Plan", "describe", "make_plan"]
