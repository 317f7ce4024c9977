"""Tests of the reference service (examples/refservice) against real gunicorn processes."""
