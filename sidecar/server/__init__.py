"""The gRPC front end: servicers, error mapping, reflection, lifecycle."""
