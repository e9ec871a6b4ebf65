"""sentiflow alerting service."""
