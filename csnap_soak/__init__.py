"""Long-running fault drivers (soaks): real csnapd processes, real clients, real signals.

Each driver is a command documented in docs/reliability.md; the CI tests in tests/faults
run short versions of the same scenarios through the same helpers.
"""
