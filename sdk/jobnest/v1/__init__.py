"""Generated gRPC and protobuf code for jobnest API v1 (see protos/jobnest/v1); do not edit."""
