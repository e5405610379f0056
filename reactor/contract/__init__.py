"""The message contract: what crosses the wire (bytes to messages, JSON Schemas)."""
