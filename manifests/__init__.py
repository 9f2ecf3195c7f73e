"""Manifest schema, writer, reader, stats and the run summary."""
