"""Development-only tooling: the embedded backing services, `make run` and the test services.

Nothing here is imported by the application (`common/`, `portal/`, `transfer/`); production
runs the Procfile against managed PostgreSQL, Redis and S3.
"""
