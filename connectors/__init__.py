"""All I/O lives here: sources, sinks, the ledger, venues and their simulators."""
