"""Python SDK (typed wrappers over the gRPC stubs) and the ``tuneplex`` CLI."""
