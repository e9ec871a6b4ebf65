"""sentiflow: real-time text classification on Kafka with a closed learning loop.

This package holds what every service shares: contracts (``sentiflow.v1``),
configuration, Kafka and Redis helpers, metrics, logging and the CLI.
"""

__version__ = "0.1.0"
