"""The engine: the one pipeline that turns messages into committed job changes and outcomes."""
