"""TF Serving's REST API for our exports: loaded servables, JSON <-> tensors, request handling and the HTTP server."""
