"""Studies that use the library but are not part of it (run from a checkout)."""
