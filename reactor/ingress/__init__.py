"""The other ways in: HTTP (`reactor serve`), one-shot `reactor invoke`, the Python library."""
