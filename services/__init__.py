"""sentiflow services, one package each."""
