"""The `reactor` command line: one click group whose subcommands load on first use."""
