"""Alerting test helpers: scenarios, a webhook receiver, the worker as a process."""
