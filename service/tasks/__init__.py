"""Tasks in Redis: the store the API submits to, the ledger the workers run from, the built-in kinds."""
