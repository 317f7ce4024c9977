"""nginx as a service with no telemetry: its config template and launcher."""
