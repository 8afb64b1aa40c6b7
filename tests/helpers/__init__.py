"""Test helpers shared across test files (worker scripts run in subprocesses)."""
