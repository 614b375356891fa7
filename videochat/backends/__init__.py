"""Redis and MongoDB: typed clients, embedded servers, every key and collection name (keys.py),
the background-worker base and the command-stream consumer built on it."""
