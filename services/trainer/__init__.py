"""sentiflow trainer service."""
