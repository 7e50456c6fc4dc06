"""Vigil's benchmarks: detector throughput and end-to-end latency through the five services."""
