"""Observability: log formatting with token masking, Prometheus metrics."""
