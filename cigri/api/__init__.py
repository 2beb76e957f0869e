"""The CiGri REST API: `cigri.api.app.create_app(conf)` (FastAPI application),
`cigri.api.auth` (identities), `cigri.api.server.serve` (uvicorn on a Unix socket with
SO_PEERCRED identities, and optional TCP)."""
