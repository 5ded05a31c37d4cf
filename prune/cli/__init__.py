"""Command-line interface of prune-llm. The library never imports this package."""
