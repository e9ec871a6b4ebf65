"""sentiflow ingest service."""
