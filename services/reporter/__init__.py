"""Reporter: the incident timeline, the read API and incident metrics."""
