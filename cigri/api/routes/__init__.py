"""One router per resource. Each route reads its typed body (cigri.api.bodies), asks the
access policy (cigri.api.policy) who may do what, and calls the library for the rules."""

from __future__ import annotations

from fastapi import APIRouter

from cigri.api.routes import campaigns, clusters, events, gridusage, jobs, notifications, root, tokens

ROUTERS: tuple[APIRouter, ...] = (root.router, campaigns.router, events.router, jobs.router, clusters.router,
                                  notifications.router, tokens.router, gridusage.router)
