"""Vigil's five services; each runs as its own process and talks to the others only through Kafka."""
