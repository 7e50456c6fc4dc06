"""Analyzer: indicators, affected hosts and users, and a summary of every incident."""
