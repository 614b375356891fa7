"""Measurements: stats sampler -> events -> metrics store -> diagnostics queries and charts."""
