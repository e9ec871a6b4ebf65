"""sentiflow: real-time text classification on Kafka with a closed learning loop.

This package holds what every service shares: configuration, Kafka and Redis helpers,
metrics, logging. The contracts' generated code is in the client distribution
(``sentiflow_client.v1``), which the services import too.
"""

__version__ = "0.1.0"
