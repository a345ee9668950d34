"""`edgetl-run serve`: a bundle behind an HTTP API and a page (the `serve` extra: starlette, uvicorn).

app.py holds the routes, limits and error shape; inference.py runs predictions on worker threads behind a
bounded admission; metrics.py is GET /metrics; server.py listens and stops gracefully; page.html is GET /.
"""
