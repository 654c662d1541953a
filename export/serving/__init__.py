"""Serving: `kerasformer-serve`, a stand-in for TensorFlow Serving's model server as strict as
the real one (REST, gRPC, batching, metrics), and `ServingClient`, a client that sends only what
the real server accepts. The SavedModel side (exporter, saved module, op and session checks)
is `export/` itself."""
