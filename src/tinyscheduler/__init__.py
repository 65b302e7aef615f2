"""TinyScheduler: keeps a host's Goose agents busy with the work queued in a TinyTask server."""

__version__ = "2.0.0"
