"""Research scripts that use torchmaml but are not part of it (not packaged; run from the repository root)."""
