"""sentiflow feedback service."""
