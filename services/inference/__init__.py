"""sentiflow inference service."""
