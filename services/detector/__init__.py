"""Detector: ingests alerts, deduplicates, correlates them into incidents, classifies and prioritises."""
