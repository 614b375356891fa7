"""Faults: the model, commands through Redis, the consumer, the injector, backend outages."""
