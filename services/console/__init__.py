"""sentiflow console service."""
