"""Vigil's command line: run the stack, send alerts, inspect and command incidents."""
