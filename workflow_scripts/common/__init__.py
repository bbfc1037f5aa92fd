"""The shared layer: config validation and experiment expansion, file I/O, run provenance
and resource measurement. Imports nothing else from the package."""
