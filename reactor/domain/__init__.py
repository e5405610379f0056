"""The domain core: the lifecycle, outcomes, errors, identifiers, tokens and records.

Pure: no I/O and no logging set-up, and it imports nothing else of ours (tests/test_layers.py).
"""
