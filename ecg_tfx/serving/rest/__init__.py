"""TF Serving's REST API for our exports: JSON <-> tensors, request routing and the HTTP server."""
