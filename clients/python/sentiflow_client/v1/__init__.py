"""Generated protobuf and gRPC code for proto/sentiflow/v1, importable without the server.

Written by ``make proto`` (protoc, then ``copy_generated.py`` moves its imports here);
the services import these modules too.
"""
