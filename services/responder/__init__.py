"""Responder: selects a playbook for each incident and plans its response; nothing destructive runs unapproved."""
