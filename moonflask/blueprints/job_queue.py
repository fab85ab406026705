"""Endpoints of the job queue API group.  Spec: web_api.md "Job Queue APIs".

Thin handlers: read the arguments, call the component, shape the result.
"""
from __future__ import annotations

import logging
from typing import Any


from ..api import (ApiBlueprint, ApiRequest)
from ..components.job_queue import JobQueue

log = logging.getLogger(__name__)

blueprint = ApiBlueprint("job_queue", __name__)


def _queue(req: ApiRequest) -> JobQueue:
    return req.server.lookup_component("job_queue")


@blueprint.endpoint("/server/job_queue/status", ["GET"])
def queue_status(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Retrieve the job queue status"."""
    return _queue(req).status()


@blueprint.endpoint("/server/job_queue/job", ["POST", "DELETE"])
def queue_job(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Enqueue a job" (POST) / "Remove a Job" (DELETE)."""
    q = _queue(req)
    if req.method == "POST":
        return q.add_jobs(req.args.get_list("filenames"), req.args.get_boolean("reset", False))
    if req.args.get_boolean("all", False):
        return q.remove_jobs(None, True)
    return q.remove_jobs(req.args.get_list("job_ids"), False)


@blueprint.endpoint("/server/job_queue/pause", ["POST"])
def queue_pause(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Pause the job queue"."""
    return _queue(req).pause()


@blueprint.endpoint("/server/job_queue/start", ["POST"])
def queue_start(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Start the job queue"."""
    return _queue(req).start()


@blueprint.endpoint("/server/job_queue/jump", ["POST"])
def queue_jump(req: ApiRequest) -> dict[str, Any]:
    """web_api.md "Perform a Queue Jump"."""
    return _queue(req).jump(req.args.get_str("job_id"))
