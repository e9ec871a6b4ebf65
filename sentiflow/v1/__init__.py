"""Generated protobuf and gRPC code for proto/sentiflow/v1 (``make proto``)."""
