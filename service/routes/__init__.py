"""HTTP edges: thin handlers that read the request, call one function and answer JSON."""
