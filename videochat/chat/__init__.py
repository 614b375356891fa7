"""Chat: message, outbox queue, hub, persister, ledger, service."""
