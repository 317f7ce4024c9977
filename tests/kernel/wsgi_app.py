"""A minimal WSGI app for the gunicorn kernel tests: GET / answers "ok" with Content-Length."""

from __future__ import annotations


def app(environ, start_response):
    body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
