"""The CiGri REST API: `cigri.api.app.create_app(conf)` (FastAPI application), one router per
resource in `cigri.api.routes`, typed bodies in `cigri.api.bodies`, the access policy in
`cigri.api.policy`, identities in `cigri.api.auth`, and `cigri.api.server.serve` (uvicorn on a
Unix socket with SO_PEERCRED identities, and optional TCP, with limits on slow clients)."""
