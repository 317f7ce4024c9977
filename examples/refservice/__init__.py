"""The obsconform reference service: a Flask app under gunicorn implementing errortrace 0.4.

Nothing is imported here on purpose: prometheus_client picks its multiprocess mode from the
environment at import time, so `__main__` must set `PROMETHEUS_MULTIPROC_DIR` first.
"""
