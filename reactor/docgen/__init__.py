"""Documentation generated from the code: it reads the domain and the contract, never the CLI."""
