"""Coordinator: incident commander, immediate escalation, escalation timers, state machine, commands."""
