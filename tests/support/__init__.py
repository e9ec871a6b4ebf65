"""Helpers shared by tests: plain modules, never conftest or test modules."""
