"""Redis and MongoDB: typed clients and embedded servers."""
