"""A CVAT test peer: the only fake in the CVAT tests, and a faithful one.

A real CVAT cannot run on these machines (it needs Docker), so this small Flask app serves the
subset of CVAT's REST API that ``labelloop.connectors.cvat`` and ``cvat-cli task auto-annotate``
use, following CVAT v2.73.0's own OpenAPI schema (``/work/shared/reference/cvat-2.73/schema.yml``)
and the responses recorded from a real CVAT in CVAT's REST test suite (the ``*.json`` files beside
it). Every object it answers with is built from a recorded object of the same kind (same fields,
same nesting), lists are paginated ``{count, next, previous, results}``, and every annotation or
task payload it receives is validated with cvat-sdk's own generated models (``LabeledDataRequest``,
``PatchedLabeledDataRequest``, ``TaskWriteRequest``...) plus a check for unknown keys, so a
malformed request from our side fails the test with a 400 as CVAT would.

Implemented (schema component in brackets):
- auth: ``POST /api/auth/login`` [LoginSerializerExRequest -> Token] sets ``sessionid`` and
  ``csrftoken`` cookies (unsafe methods then need ``X-CSRFToken``); ``Authorization: Token|Bearer|
  Basic`` are accepted too; ``POST /api/auth/logout``; ``GET /api/users/self`` [User];
  ``GET /api/server/about`` [About].
- ``/api/projects`` list/create/retrieve [ProjectRead]; ``/api/tasks`` list/create/retrieve/delete
  [TaskWriteRequest -> TaskRead]; ``/api/labels`` list by task/job/project [Label].
- data: ``POST /api/tasks/{id}/data/`` with the Upload-Start / Upload-Multiple / Upload-Finish
  protocol the SDK uses [DataRequest -> RqId], then ``GET /api/requests/{rq_id}`` [Request]
  (``started`` on the first poll, then ``finished`` or ``failed`` with CVAT's message for an
  undecodable image); ``GET /api/tasks/{id}/data/?type=frame|chunk`` (chunks are zips of the
  original images, as ``data_original_chunk_type="imageset"``); ``/data/meta`` [DataMetaRead];
  frame order follows ``sorting_method`` (``predefined`` keeps ``upload_file_order``).
- ``/api/jobs`` list with the simple filters, the JSON-logic ``filter`` and ``sort`` [JobRead],
  ``GET/PATCH /api/jobs/{id}`` [PatchedJobWriteRequest]; ``POST /api/jobs`` for ground-truth jobs;
  ``GET /api/jobs/{id}/data/meta`` [DataMetaRead].
- annotations: ``GET/PUT/PATCH?action=create|update|delete/DELETE`` on
  ``/api/jobs/{id}/annotations/`` and ``/api/tasks/{id}/annotations/`` [LabeledData]; writes bump
  the ``updated_date`` of the task and of each job whose frames they touch; a PATCH answers with
  the written objects and their new ids, as CVAT does.
- ``/api/issues`` list/create/PATCH, ``/api/comments`` list/create [IssueRead, CommentRead];
  ``/api/quality/reports`` [QualityReport] (recorded 2.73 shape: note cvat-sdk 2.80's model wants
  ``summary.jobs.completed``, which a 2.73 server does not send).

What a real CVAT 2.73.0 did where the recordings say nothing, and the peer does the same:

- a ground-truth job made of frames [0, 7, 12] of a 20-frame task answers ``frame_count 3,
  start_frame 0, stop_frame 19``; its ``/data/meta`` lists ``included_frames [0, 7, 12]`` and names
  the other frames ``placeholder.jpg``;
- annotation writes leave a job's ``state`` alone ("new" stays "new"); ``PATCH /api/jobs/{id}``
  with a ``stage`` and no ``state`` resets the state to "new";
- a reply leaves its issue's ``updated_date`` alone (resolving or assigning changes it); issue
  activity never changes the job's ``updated_date``;
- a shape or tag is stored with every attribute of its label, those not given at their default
  value (``""`` for a text attribute);
- an ``id`` on create (PUT, or PATCH action=create) is refused with ``400 {"shapes": [{"id":
  ["must be absent"]}]}``; the annotations' ``version`` stays 0;
- permissions without an organization: only an admin, the task's owner or assignee, its project's
  owner or assignee, or a job's assignee sees a task (lists leave the rest out, reads answer 403);
  a job is seen by its assignee and the task's staff; a reply needs its author to be the issue's
  owner or assignee or staff of its job or task, else ``403 {"detail": "You do not have permission
  to perform this action."}``.

Agent functions (`cvat-cli function create-native` / `run-agent`): see :mod:`tests.cvat_peer.functions`.

Switches for failure tests: :meth:`CvatPeer.fail` answers the next N matching requests with an
error (optionally after applying the write, i.e. a lost response), :meth:`CvatPeer.stop` takes it
down, and :attr:`CvatPeer.log` records every request.
"""

from __future__ import annotations

import base64
import copy
import io
import itertools
import json
import logging
import re
import secrets
import threading
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cvat_sdk.api_client import models
from flask import Flask, Request, Response, request
from PIL import Image
from werkzeug.serving import make_server

from labelloop.procs import free_port
from tests.cvat_peer.functions import FunctionsMixin
from tests.cvat_peer.http import HttpError, reply, validate

REFERENCE = Path("/work/shared/reference/cvat-2.73")
PERMISSION_DENIED = "You do not have permission to perform this action."

# the fields a new task and a new job of uploaded images start with
_NEW_IMAGESET: dict[str, Any] = {
    "assignee_updated_date": None,
    "status": "annotation",
    "mode": "annotation",
    "data_original_chunk_type": "imageset",
    "data_compressed_chunk_type": "imageset",
    "source_storage": None,
    "target_storage": None,
}


def _load(name: str) -> list[dict[str, Any]]:
    return json.loads((REFERENCE / f"{name}.json").read_text())["results"]


@dataclass
class Failure:
    status: int
    times: int
    method: str | None
    path: re.Pattern[str] | None
    apply: bool  # perform the request, then answer the error (a response lost on the way back)


@dataclass
class Frame:
    name: str
    data: bytes
    width: int
    height: int


@dataclass
class Upload:
    files: list[tuple[str, bytes]] = field(default_factory=list)


class CvatPeer(FunctionsMixin):
    """The peer's state and its HTTP server; start() binds 127.0.0.1 on a free port."""

    def __init__(self, users: dict[str, str] | None = None, page_size: int = 10) -> None:
        self.users_pw = users or {"admin1": "admin1-pw", "annotator": "ann-pw", "reviewer": "rev-pw"}
        self.page_size = page_size
        self.port = free_port()
        self.log: list[tuple[str, str, str | None]] = []
        self._failures: list[Failure] = []
        self._lock = threading.RLock()
        self._clock = datetime.now(UTC)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        rec_users = {o["owner"]["id"]: o["owner"] for o in _load("tasks") + _load("issues") if o.get("owner")}
        self._user_tpl = next(iter(rec_users.values()))
        base_id = max(rec_users) + 1
        self.users: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(self.users_pw):
            u = dict(self._user_tpl, id=base_id + i, username=name, first_name=name.title(), last_name="")
            u["url"] = f"/api/users/{u['id']}"
            self.users[name] = u
        self.sessions: dict[str, str] = {}  # sessionid or token -> username
        self.csrf: dict[str, str] = {}
        # recorded objects seed the store: lists look like a used server, new ids continue theirs
        self.projects = {o["id"]: o for o in _load("projects")}
        self.tasks = {o["id"]: o for o in _load("tasks")}
        self.jobs = {o["id"]: o for o in _load("jobs")}
        self.labels = {o["id"]: o for o in _load("labels")}
        self.issues = {o["id"]: o for o in _load("issues")}
        self.comments = {o["id"]: o for o in _load("comments")}
        self.reports = {o["id"]: o for o in _load("quality_reports")}
        rec_ann = json.loads((REFERENCE / "annotations.json").read_text())
        self.recorded_job_ann = {int(k): v for k, v in rec_ann["job"].items()}
        self.recorded_task_ann = {int(k): v for k, v in rec_ann["task"].items()}
        self._tpl = {
            "project": self.projects[min(self.projects)],
            "task": next(t for t in self.tasks.values() if t["media_type"] == "image"),
            "job": next(j for j in self.jobs.values() if j["media_type"] == "image" and j["assignee"]),
            "label": next(lb for lb in self.labels.values() if lb["attributes"]),
            "issue": next(iter(self.issues.values())),
            "comment": next(iter(self.comments.values())),
            "report": next(r for r in self.reports.values() if r["target"] == "task"),
        }
        self._ids = {
            k: itertools.count(max(d) + 1)
            for k, d in (
                ("project", self.projects),
                ("task", self.tasks),
                ("job", self.jobs),
                ("label", self.labels),
                ("issue", self.issues),
                ("comment", self.comments),
                ("report", self.reports),
            )
        }
        self._ids["shape"] = itertools.count(10_000)
        self._ids["attr"] = itertools.count(1_000)
        self.frames: dict[int, list[Frame]] = {}
        self.shapes: dict[int, dict[int, dict[str, Any]]] = {}  # task -> shape id -> shape
        self.tags: dict[int, dict[int, dict[str, Any]]] = {}
        self.gt_shapes: dict[int, dict[int, dict[str, Any]]] = {}  # gt job -> shapes
        self.gt_frames: dict[int, list[int]] = {}  # gt job -> its included frames
        self.admins = {"admin1"}
        self.versions: dict[int, int] = {}
        self.uploads: dict[int, Upload] = {}
        self.rq: dict[str, dict[str, Any]] = {}
        self._init_functions()
        self.app = self._make_app()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CvatPeer:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take the server down (connections are then refused); start() brings it back."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> CvatPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(
        self,
        status: int = 500,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
        apply: bool = False,
    ) -> None:
        """Answer the next ``times`` requests matching method/path (a regex) with ``status``."""
        with self._lock:
            self._failures.append(Failure(status, times, method, re.compile(path) if path else None, apply))

    def count(self, method: str, path_re: str) -> int:
        return sum(1 for m, p, _ in self.log if m == method and re.search(path_re, p))

    # ------------------------------------------------------------------ helpers for tests

    def now(self) -> str:
        """Strictly increasing timestamps in CVAT's format, so updated_date cursors are exact."""
        with self._lock:
            self._clock = max(self._clock + timedelta(microseconds=1000), datetime.now(UTC))
            return self._clock.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _user_ref(self, username: str | None) -> dict[str, Any] | None:
        if username is None:
            return None
        u = self.users[username]
        return {k: u[k] for k in ("first_name", "id", "last_name", "url", "username")}

    def set_job(self, job_id: int, **changes: Any) -> dict[str, Any]:
        """Change stage/state/assignee (a username) as a QA lead would in the UI. An explicit
        ``updated_date`` stands for a write whose transaction committed after later ones had."""
        with self._lock:
            job = self.jobs[job_id]
            if "assignee" in changes:
                changes["assignee"] = self._user_ref(changes["assignee"])
                changes["assignee_updated_date"] = self.now()
            job.update({"updated_date": self.now(), **changes})
            return job

    def add_gt_job(self, task_id: int, frames: list[int]) -> dict[str, Any]:
        """A ground-truth job of the given frames (as POST /api/jobs type=ground_truth does)."""
        with self._lock:
            return self._create_gt_job(task_id, frames)

    def _create_gt_job(self, task_id: int, frames: list[int]) -> dict[str, Any]:
        """CVAT 2.73: the job spans the task's whole range; the frames are its ``included_frames``."""
        task = self._get(self.tasks, task_id, "task")
        size = len(self.frames.get(task_id, []))
        wanted = sorted(set(frames))
        if not wanted or not all(0 <= f < size for f in wanted):
            raise HttpError(400, {"frames": [f"frames must be within [0, {size - 1}]"]})
        job = self._create_job(task["id"], 0, size - 1, "ground_truth")
        job["frame_count"] = len(wanted)
        self.gt_frames[job["id"]] = wanted
        return job

    def add_issue(self, job_id: int, frame: int, message: str, owner: str, resolved: bool = False) -> int:
        with self._lock:
            iid = next(self._ids["issue"])
            now = self.now()
            issue = copy.deepcopy(self._tpl["issue"])
            issue.update(
                id=iid,
                job=job_id,
                frame=frame,
                owner=self._user_ref(owner),
                resolved=resolved,
                created_date=now,
                updated_date=now,
                comments={"count": 0, "url": f"{self.url}/api/comments?issue_id={iid}"},
            )
            self.issues[iid] = issue
            self.add_comment(iid, message, owner)
            return iid

    def add_comment(self, issue_id: int, message: str, owner: str, created_date: str | None = None) -> int:
        """A reply; an explicit ``created_date`` stands for one that committed late (see set_job)."""
        with self._lock:
            cid = next(self._ids["comment"])
            now = created_date or self.now()
            c = dict(
                self._tpl["comment"], id=cid, issue=issue_id, message=message, owner=self._user_ref(owner)
            )
            c.update(created_date=now, updated_date=now)
            self.comments[cid] = c
            self.issues[issue_id]["comments"]["count"] += 1  # a reply leaves the issue's date alone
            return cid

    def add_quality_report(
        self, task_id: int, job_id: int | None = None, created_date: str | None = None, **summary: Any
    ) -> int:
        """A quality report shaped as the recorded ones (summary numbers overridable)."""
        with self._lock:
            rid = next(self._ids["report"])
            rep = copy.deepcopy(self._tpl["report"])
            task = self.tasks[task_id]
            rep.update(
                id=rid,
                task_id=task_id,
                job_id=job_id,
                project_id=task["project_id"],
                parent_id=None,
                target="job" if job_id else "task",
                created_date=created_date or self.now(),
                target_last_updated=task["updated_date"],
            )
            if job_id is None:
                rep["summary"].pop("tasks", None)
            else:
                rep["summary"].pop("tasks", None)
                rep["summary"].pop("jobs", None)
            rep["summary"].update(summary)
            self.reports[rid] = rep
            return rid

    # ------------------------------------------------------------------ app

    def _make_app(self) -> Flask:
        app = Flask("cvat-peer")
        app.config["MAX_FORM_PARTS"] = 100_000  # the SDK sends up to 100 MB of files per request
        app.request_class = _BigFormRequest
        app.url_map.strict_slashes = False
        peer = self

        @app.before_request
        def _auth_and_failures() -> Response | None:
            user = peer._authenticate()
            peer.log.append((request.method, request.path, user))
            failure = peer._take_failure()
            if failure and not failure.apply:
                return reply({"detail": f"injected {failure.status}"}, failure.status)
            request.environ["peer.failure"] = failure
            if request.path in ("/api/auth/login", "/api/server/about"):
                return None
            if user is None:
                return reply({"detail": "Authentication credentials were not provided."}, 401)
            request.environ["peer.user"] = user
            peer._check_view(user, request.path)
            return None

        @app.after_request
        def _lost_response(resp: Response) -> Response:
            failure = request.environ.get("peer.failure")
            if failure is not None:
                return reply({"detail": f"injected {failure.status} after applying"}, failure.status)
            return resp

        @app.errorhandler(HttpError)
        def _http_error(e: HttpError) -> Response:
            return reply(e.detail, e.status)

        routes = {
            ("POST", "/api/auth/login"): self.login,
            ("POST", "/api/auth/logout"): self.logout,
            ("GET", "/api/server/about"): self.about,
            ("GET", "/api/users/self"): self.user_self,
            ("GET", "/api/projects"): self.list_projects,
            ("POST", "/api/projects"): self.create_project,
            ("GET", "/api/projects/<int:pid>"): self.get_project,
            ("GET", "/api/tasks"): self.list_tasks,
            ("POST", "/api/tasks"): self.create_task,
            ("GET", "/api/tasks/<int:tid>"): self.get_task,
            ("DELETE", "/api/tasks/<int:tid>"): self.delete_task,
            ("POST", "/api/tasks/<int:tid>/data"): self.upload_data,
            ("GET", "/api/tasks/<int:tid>/data"): self.get_data,
            ("GET", "/api/tasks/<int:tid>/data/meta"): self.data_meta,
            ("GET", "/api/requests/<rq_id>"): self.get_request,
            ("GET", "/api/labels"): self.list_labels,
            ("GET", "/api/jobs"): self.list_jobs,
            ("POST", "/api/jobs"): self.create_job,
            ("GET", "/api/jobs/<int:jid>"): self.get_job,
            ("PATCH", "/api/jobs/<int:jid>"): self.patch_job,
            ("GET", "/api/jobs/<int:jid>/data/meta"): self.job_data_meta,
            ("GET", "/api/issues"): self.list_issues,
            ("POST", "/api/issues"): self.create_issue,
            ("PATCH", "/api/issues/<int:iid>"): self.patch_issue,
            ("GET", "/api/comments"): self.list_comments,
            ("POST", "/api/comments"): self.create_comment,
            ("GET", "/api/quality/reports"): self.list_reports,
            **self.function_routes(),
        }
        for (method, rule), fn in routes.items():
            app.add_url_rule(rule, f"{method} {rule}", fn, methods=[method])
        for kind in ("tasks", "jobs"):
            rule = f"/api/{kind}/<int:oid>/annotations"
            app.add_url_rule(
                rule,
                f"ann {kind}",
                lambda oid, kind=kind: peer.annotations(kind, oid),
                methods=["GET", "PUT", "PATCH", "DELETE"],
            )
        return app

    def _authenticate(self) -> str | None:
        auth = request.headers.get("Authorization", "")
        scheme, _, cred = auth.partition(" ")
        if scheme in ("Token", "Bearer"):
            return self.sessions.get(cred)
        if scheme == "Basic":
            user, _, pw = base64.b64decode(cred).decode().partition(":")
            return user if self.users_pw.get(user) == pw else None
        sid = request.cookies.get("sessionid")
        if sid in self.sessions:
            if request.method not in ("GET", "HEAD", "OPTIONS") and request.headers.get(
                "X-CSRFToken"
            ) != self.csrf.get(sid):
                raise HttpError(403, {"detail": "CSRF Failed: CSRF token missing."})
            return self.sessions[sid]
        return None

    # ------------------------------------------------------------------ permissions (no organization)

    def _is(self, user: str, ref: dict[str, Any] | None) -> bool:
        return bool(ref) and ref.get("username") == user  # type: ignore[union-attr]

    def _task_staff(self, user: str, task: dict[str, Any]) -> bool:
        project = self.projects.get(task.get("project_id") or -1) or {}
        return user in self.admins or any(
            self._is(user, ref)
            for ref in (
                task.get("owner"),
                task.get("assignee"),
                project.get("owner"),
                project.get("assignee"),
            )
        )

    def can_view_task(self, user: str, task: dict[str, Any]) -> bool:
        """Task staff, and the assignee of any of its jobs (CVAT lists that task for them)."""
        return self._task_staff(user, task) or any(
            j["task_id"] == task["id"] and self._is(user, j.get("assignee")) for j in self.jobs.values()
        )

    def can_view_job(self, user: str, job: dict[str, Any]) -> bool:
        task = self.tasks.get(job["task_id"])
        return self._is(user, job.get("assignee")) or (task is not None and self._task_staff(user, task))

    def can_reply(self, user: str, issue: dict[str, Any]) -> bool:
        job = self.jobs.get(issue["job"])
        return (
            self._is(user, issue.get("owner"))
            or self._is(user, issue.get("assignee"))
            or (job is not None and self.can_view_job(user, job))
        )

    def _check_view(self, user: str, path: str) -> None:
        """Reads and writes of one task or job need permission to view it, as in CVAT."""
        m = re.match(r"^/api/(tasks|jobs)/(\d+)(/|$)", path)
        if not m:
            return
        oid = int(m[2])
        store = self.tasks if m[1] == "tasks" else self.jobs
        if oid not in store:
            return  # the handler answers 404
        ok = self.can_view_task(user, store[oid]) if m[1] == "tasks" else self.can_view_job(user, store[oid])
        if not ok:
            raise HttpError(403, {"detail": PERMISSION_DENIED})

    def _visible(self, items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
        """What a list shows the requesting user."""
        user = request.environ["peer.user"]
        if user in self.admins:
            return items
        if kind == "task":
            return [t for t in items if self.can_view_task(user, t)]
        if kind == "job":
            return [j for j in items if self.can_view_job(user, j)]
        job_of = {"issue": lambda o: o["job"], "comment": lambda o: self.issues[o["issue"]]["job"]}
        if kind in job_of:
            return [
                o
                for o in items
                if job_of[kind](o) in self.jobs and self.can_view_job(user, self.jobs[job_of[kind](o)])
            ]
        return [
            o
            for o in items
            if o.get("task_id") in self.tasks and self.can_view_task(user, self.tasks[o["task_id"]])
        ]

    def _take_failure(self) -> Failure | None:
        with self._lock:
            for f in self._failures:
                if (f.method in (None, request.method)) and (f.path is None or f.path.search(request.path)):
                    f.times -= 1
                    if f.times <= 0:
                        self._failures.remove(f)
                    return f
        return None

    def _page(self, items: list[dict[str, Any]]) -> Response:
        items = self._sort(items, request.args.get("sort"))
        page = int(request.args.get("page", 1))
        size = min(int(request.args.get("page_size", self.page_size)), 1000)
        start = (page - 1) * size
        if start > len(items) or page < 1:
            raise HttpError(404, {"detail": "Invalid page."})

        def link(p: int) -> str:
            args = dict(request.args, page=str(p))
            return f"{self.url}{request.path}?" + "&".join(f"{k}={v}" for k, v in args.items())

        return reply(
            {
                "count": len(items),
                "next": link(page + 1) if start + size < len(items) else None,
                "previous": link(page - 1) if page > 1 else None,
                "results": items[start : start + size],
            }
        )

    @staticmethod
    def _sort(items: list[dict[str, Any]], sort: str | None) -> list[dict[str, Any]]:
        items = sorted(items, key=lambda o: -o["id"])  # CVAT lists newest first by default
        for key in reversed((sort or "").split(",")) if sort else []:
            name = key.lstrip("-")
            items.sort(key=lambda o, n=name: _sort_key(_field(o, n)), reverse=key.startswith("-"))
        return items

    @staticmethod
    def _filtered(items: list[dict[str, Any]], simple: tuple[str, ...]) -> list[dict[str, Any]]:
        out = items
        for name in simple:
            if name in request.args:
                want = request.args[name]
                out = [o for o in out if str(_field(o, name)) == want]
        if "filter" in request.args:
            try:
                rule = json.loads(request.args["filter"])
            except json.JSONDecodeError as e:
                raise HttpError(400, {"detail": f"filter: invalid JSON: {e}"}) from e
            out = [o for o in out if _json_logic(rule, o)]
        return out

    # ------------------------------------------------------------------ auth, server, users

    def login(self) -> Response:
        body = validate(request.get_json(silent=True), models.LoginSerializerExRequest)
        user = getattr(body, "username", None)
        if self.users_pw.get(user) != body.password:
            raise HttpError(400, {"non_field_errors": ["Unable to log in with provided credentials."]})
        key, sid, csrf = secrets.token_hex(20), secrets.token_hex(16), secrets.token_hex(16)
        self.sessions[key] = self.sessions[sid] = user
        self.csrf[sid] = csrf
        resp = reply({"key": key})
        resp.set_cookie("sessionid", sid)
        resp.set_cookie("csrftoken", csrf)
        return resp

    def logout(self) -> Response:
        self.sessions.pop(request.cookies.get("sessionid", ""), None)
        return reply({"detail": "Successfully logged out."})

    def about(self) -> Response:
        return reply(
            {
                "name": "Computer Vision Annotation Tool",
                "description": "CVAT is completely re-designed and re-implemented version of ...",
                "version": "2.73.0",
                "logo_url": f"{self.url}/static/logo.svg",
                "subtitle": "Test peer following CVAT 2.73 schema",
            }
        )

    def user_self(self) -> Response:
        u = self.users[request.environ["peer.user"]]
        return reply(
            dict(
                u,
                email=f"{u['username']}@example.com",
                groups=["admin"] if u["username"] == "admin1" else ["user"],
                is_staff=False,
                is_superuser=u["username"] == "admin1",
                is_active=True,
                last_login=self.now(),
                date_joined="2024-01-01T00:00:00.000000Z",
                has_analytics_access=False,
            )
        )

    # ------------------------------------------------------------------ projects, tasks, labels

    def _make_labels(self, specs: list[Any], **owner: Any) -> None:
        for spec in specs:
            lid = next(self._ids["label"])
            attrs = []
            for a in getattr(spec, "attributes", []):
                attrs.append(
                    {
                        "id": next(self._ids["attr"]),
                        "name": a.name,
                        "mutable": getattr(a, "mutable", False),
                        "input_type": a.input_type.value,
                        "default_value": getattr(a, "default_value", a.values[0] if a.values else ""),
                        "values": list(a.values),
                    }
                )
            label = copy.deepcopy(self._tpl["label"])
            label.pop("project_id", None)
            label.update(
                id=lid,
                name=spec.name,
                color=getattr(spec, "color", "#33ddff"),
                type=getattr(getattr(spec, "type", None), "value", None) or getattr(spec, "type", "any"),
                attributes=attrs,
                sublabels=[],
                has_parent=False,
                parent_id=None,
                **owner,
            )
            self.labels[lid] = label

    def _new(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A copy of the recorded ``kind`` (project, task or job) under the next id, with its own urls,
        created and updated now; ``fields`` fill in the rest. The caller holds the lock."""
        oid = next(self._ids[kind])
        now = self.now()
        obj = copy.deepcopy(self._tpl[kind])
        obj.update(
            id=oid,
            organization=None,
            created_date=now,
            updated_date=now,
            url=f"{self.url}/api/{kind}s/{oid}",
            labels={"url": f"{self.url}/api/labels?{kind}_id={oid}"},
            **fields,
        )
        return obj

    def _new_owned(self, kind: str, name: str, **fields: Any) -> dict[str, Any]:
        """A new project or task owned by the user making the request, as POST creates them."""
        owner = self._user_ref(request.environ["peer.user"])
        return self._new(kind, name=name, owner=owner, assignee=None, organization_id=None, **fields)

    def list_projects(self) -> Response:
        return self._page(self._filtered(list(self.projects.values()), ("name", "id")))

    def create_project(self) -> Response:
        spec = validate(request.get_json(silent=True), models.ProjectWriteRequest)
        with self._lock:
            p = self._new_owned("project", spec.name, task_subsets=[])
            pid = p["id"]
            p["tasks"] = {"count": 0, "url": f"{self.url}/api/tasks?project_id={pid}"}
            self.projects[pid] = p
            self._make_labels(getattr(spec, "labels", []), project_id=pid)
            return reply(p, 201)

    def get_project(self, pid: int) -> Response:
        return reply(self._get(self.projects, pid, "project"))

    def list_tasks(self) -> Response:
        tasks = self._visible(list(self.tasks.values()), "task")
        return self._page(self._filtered(tasks, ("name", "project_id", "subset", "id")))

    def create_task(self) -> Response:
        spec = validate(request.get_json(silent=True), models.TaskWriteRequest)
        pid = getattr(spec, "project_id", None)
        if pid is not None and pid not in self.projects:
            raise HttpError(400, {"project_id": [f'Invalid pk "{pid}" - object does not exist.']})
        if pid is None and not getattr(spec, "labels", None):
            raise HttpError(400, {"label_set": ["Label set must not be empty"]})
        with self._lock:
            t = self._new_owned(
                "task",
                spec.name,
                project_id=pid,
                project_name=self.projects[pid]["name"] if pid else None,
                overlap=0,
                segment_size=getattr(spec, "segment_size", 0),
                subset=getattr(spec, "subset", ""),
                size=0,
                data=None,
                data_chunk_size=None,
                validation_mode=None,
                **_NEW_IMAGESET,
            )
            tid = t["id"]
            t["jobs"] = {
                "completed": 0,
                "count": 0,
                "url": f"{self.url}/api/jobs?task_id={tid}",
                "validation": 0,
            }
            self.tasks[tid] = t
            self.shapes[tid], self.tags[tid], self.versions[tid] = {}, {}, 0
            if pid is None:
                self._make_labels(spec.labels, task_id=tid)
            return reply(t, 201)

    def _get(self, store: dict[int, Any], oid: int, what: str) -> Any:
        if oid not in store:
            raise HttpError(404, {"detail": f"No {what} matches the given query."})
        return store[oid]

    def get_task(self, tid: int) -> Response:
        return reply(self._get(self.tasks, tid, "task"))

    def delete_task(self, tid: int) -> Response:
        with self._lock:
            self._get(self.tasks, tid, "task")
            del self.tasks[tid]
            for jid in [j for j, job in self.jobs.items() if job["task_id"] == tid]:
                del self.jobs[jid]
            return Response(status=204)

    def list_labels(self) -> Response:
        labels = list(self.labels.values())
        task_id = request.args.get("task_id")
        if "job_id" in request.args:
            task_id = self._get(self.jobs, int(request.args["job_id"]), "job")["task_id"]
        if task_id is not None:
            task = self._get(self.tasks, int(task_id), "task")
            if task["project_id"]:
                labels = [lb for lb in labels if lb.get("project_id") == task["project_id"]]
            else:
                labels = [lb for lb in labels if lb.get("task_id") == task["id"]]
        elif "project_id" in request.args:
            labels = [lb for lb in labels if str(lb.get("project_id")) == request.args["project_id"]]
        return self._page(self._filtered(labels, ("name", "type")))

    # ------------------------------------------------------------------ data

    def upload_data(self, tid: int) -> Response:
        task = self._get(self.tasks, tid, "task")
        if "Upload-Start" in request.headers:
            self.uploads[tid] = Upload()
            return Response(status=202)
        if "Upload-Multiple" in request.headers:
            up = self.uploads.get(tid)
            if up is None:
                raise HttpError(400, {"detail": "Upload-Start was not sent"})
            for key in sorted(request.files, key=lambda k: int(re.sub(r"\D", "", k) or 0)):
                f = request.files[key]
                up.files.append((Path(f.filename or key).name, f.read()))
            return Response(status=200)
        if "Upload-Finish" in request.headers:
            body = request.get_json(silent=True) or {}
            spec = validate(body, models.DataRequest)
            up = self.uploads.pop(tid, None)
            if up is None:
                raise HttpError(400, {"detail": "Upload-Start was not sent"})
            rq_id = f"action=create&target=task&target_id={tid}"
            self.rq[rq_id] = {"tid": tid, "polls": 0, "created": self.now()}
            self._build_task_data(task, up, spec, rq_id)
            return reply({"rq_id": rq_id}, 202)
        raise HttpError(400, {"detail": "a single Data request is not supported by this peer"})

    def _build_task_data(self, task: dict[str, Any], up: Upload, spec: Any, rq_id: str) -> None:
        """CVAT does this in a background worker; the request reports the outcome when polled."""
        files = dict(up.files)
        method = getattr(getattr(spec, "sorting_method", None), "value", "lexicographical")
        order = list(getattr(spec, "upload_file_order", []) or [])
        if method == "predefined" and order:
            names = [Path(n).name for n in order]
        elif method == "predefined":
            names = [n for n, _ in up.files]
        else:
            names = sorted(files)
        frames = []
        for n in names:
            try:
                with Image.open(io.BytesIO(files[n])) as im:
                    im.load()
                    frames.append(Frame(n, files[n], im.width, im.height))
            except Exception as e:
                self.rq[rq_id]["error"] = f"Could not read the image {n}: cannot identify image file ({e})"
                return
        with self._lock:
            tid = task["id"]
            self.frames[tid] = frames
            chunk = int(getattr(spec, "chunk_size", 0) or 36)
            task.update(
                size=len(frames),
                data=tid,
                data_chunk_size=chunk,
                image_quality=spec.image_quality,
                updated_date=self.now(),
            )
            seg = task["segment_size"] or len(frames)
            task["segment_size"] = seg
            for start in range(0, len(frames), seg):
                self._create_job(tid, start, min(start + seg, len(frames)) - 1, "annotation")

    def _create_job(self, tid: int, start: int, stop: int, kind: str) -> dict[str, Any]:
        task = self.tasks[tid]
        job = self._new(
            "job",
            task_id=tid,
            task_name=task["name"],
            project_id=task["project_id"],
            project_name=task["project_name"],
            assignee=None,
            bug_tracker="",
            stage="annotation",
            state="new",
            type=kind,
            start_frame=start,
            stop_frame=stop,
            frame_count=stop - start + 1,
            data_chunk_size=task["data_chunk_size"],
            **_NEW_IMAGESET,
        )
        jid = job["id"]
        job["issues"] = {"count": 0, "url": f"{self.url}/api/issues?job_id={jid}"}
        self.jobs[jid] = job
        if kind == "ground_truth":
            self.gt_shapes[jid] = {}
            task["validation_mode"] = "gt"
        task["jobs"]["count"] += 1
        return job

    def get_request(self, rq_id: str) -> Response:
        rq = self.rq.get(rq_id)
        if rq is None:
            raise HttpError(404, {"detail": "Request not found"})
        rq["polls"] += 1
        status = "started" if rq["polls"] == 1 else ("failed" if "error" in rq else "finished")
        out = {
            "id": rq_id,
            "status": status,
            "message": rq.get("error", "") if status == "failed" else "",
            "operation": {"type": "create:task", "target": "task", "task_id": rq["tid"]},
            "progress": 1.0 if status == "finished" else 0.0,
            "created_date": rq["created"],
            "owner": {"id": 1, "username": request.environ["peer.user"]},
        }
        if status == "finished":
            out.update(finished_date=self.now(), result_id=rq["tid"])
        return reply(out)

    def data_meta(self, tid: int) -> Response:
        task = self._get(self.tasks, tid, "task")
        frames = self.frames.get(tid, [])
        return reply(
            {
                "chunks_updated_date": task["updated_date"],
                "chunk_size": task["data_chunk_size"],
                "size": len(frames),
                "image_quality": task.get("image_quality", 70),
                "start_frame": 0,
                "stop_frame": max(len(frames) - 1, 0),
                "frame_filter": "",
                "frames": [
                    {"width": f.width, "height": f.height, "name": f.name, "related_files": 0} for f in frames
                ],
                "deleted_frames": [],
                "included_frames": None,
                "storage": "local",
                "cloud_storage_id": None,
            }
        )

    def get_data(self, tid: int) -> Response:
        self._get(self.tasks, tid, "task")
        frames = self.frames.get(tid, [])
        kind, number = request.args.get("type"), int(request.args.get("number", 0))
        if kind == "frame":
            if not 0 <= number < len(frames):
                raise HttpError(400, {"detail": f"Incorrect requested frame number: {number}"})
            mime = Image.MIME.get(Image.open(io.BytesIO(frames[number].data)).format or "", "image/jpeg")
            return Response(frames[number].data, mimetype=mime)
        if kind == "chunk":
            size = self.tasks[tid]["data_chunk_size"]
            part = frames[number * size : (number + 1) * size]
            if not part:
                raise HttpError(400, {"detail": f"Incorrect requested chunk number: {number}"})
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for i, f in enumerate(part):
                    z.writestr(f"{number * size + i:06d}{Path(f.name).suffix}", f.data)
            return Response(buf.getvalue(), mimetype="application/zip")
        raise HttpError(400, {"type": [f"unsupported type {kind!r} in this peer"]})

    # ------------------------------------------------------------------ jobs

    def list_jobs(self) -> Response:
        simple = ("task_id", "project_id", "stage", "state", "type", "assignee", "parent_job_id", "id")
        return self._page(self._filtered(self._visible(list(self.jobs.values()), "job"), simple))

    def create_job(self) -> Response:
        spec = validate(request.get_json(silent=True), models.JobWriteRequest)
        if spec.type.value != "ground_truth":
            raise HttpError(400, {"type": ["only ground_truth jobs can be created"]})
        user = request.environ["peer.user"]
        task = self._get(self.tasks, spec.task_id, "task")
        if not self._task_staff(user, task):
            raise HttpError(403, {"detail": PERMISSION_DENIED})
        with self._lock:
            return reply(self._create_gt_job(spec.task_id, list(getattr(spec, "frames", []) or [0])), 201)

    def get_job(self, jid: int) -> Response:
        return reply(self._get(self.jobs, jid, "job"))

    def patch_job(self, jid: int) -> Response:
        spec = validate(request.get_json(silent=True), models.PatchedJobWriteRequest)
        job = self._get(self.jobs, jid, "job")
        changes: dict[str, Any] = {}
        for k in ("stage", "state"):
            if hasattr(spec, k):
                changes[k] = getattr(spec, k).value
        if "stage" in changes and "state" not in changes:
            changes["state"] = "new"  # CVAT 2.73: a stage alone resets the state
        if hasattr(spec, "assignee"):
            user = next((n for n, u in self.users.items() if u["id"] == spec.assignee), None)
            changes["assignee"] = user
        return reply(self.set_job(job["id"], **changes))

    def job_data_meta(self, jid: int) -> Response:
        job = self._get(self.jobs, jid, "job")
        task = self.tasks[job["task_id"]]
        frames = self.frames.get(job["task_id"], [])
        included = self.gt_frames.get(jid)
        listed = []
        for n in range(job["start_frame"], job["stop_frame"] + 1):
            f = frames[n]
            real = included is None or n in included
            listed.append(
                {
                    "width": f.width,
                    "height": f.height,
                    "name": f.name if real else "placeholder.jpg",
                    "related_files": 0,
                }
            )
        return reply(
            {
                "chunks_updated_date": task["updated_date"],
                "chunk_size": task["data_chunk_size"],
                "size": len(listed),
                "image_quality": task.get("image_quality", 70),
                "start_frame": job["start_frame"],
                "stop_frame": job["stop_frame"],
                "frame_filter": "",
                "frames": listed,
                "deleted_frames": [],
                "included_frames": included,
                "storage": "local",
                "cloud_storage_id": None,
            }
        )

    # ------------------------------------------------------------------ annotations

    def annotations(self, kind: str, oid: int) -> Response:
        if kind == "tasks":
            task = self._get(self.tasks, oid, "task")
            tid, lo, hi, gt = task["id"], 0, max(task["size"] - 1, 0), None
        else:
            job = self._get(self.jobs, oid, "job")
            tid, lo, hi = job["task_id"], job["start_frame"], job["stop_frame"]
            gt = oid if job["type"] == "ground_truth" else None
        if tid not in self.shapes:  # a recorded task: answer the recorded annotations, read-only
            rec = (self.recorded_task_ann if kind == "tasks" else self.recorded_job_ann).get(oid)
            if request.method != "GET" or rec is None:
                raise HttpError(405, {"detail": "recorded objects are read-only in this peer"})
            return reply(rec)
        with self._lock:
            shapes = self.gt_shapes[gt] if gt else self.shapes[tid]
            tags = {} if gt else self.tags[tid]
            if request.method == "GET":
                return reply(self._labeled_data(tid, shapes, tags, lo, hi))
            if request.method == "DELETE":
                self._drop(shapes, tags, lo, hi)
                self._touch(tid, lo, hi, gt)
                return Response(status=204)
            if request.method == "PUT":
                body = validate(request.get_json(silent=True), models.LabeledDataRequest)
                _refuse_ids(body)
                self._drop(shapes, tags, lo, hi)
                written = self._write(tid, body, shapes, tags, lo, hi, "create")
            else:
                action = request.args.get("action")
                if action not in ("create", "update", "delete"):
                    raise HttpError(
                        400, {"action": ["This query parameter is required: create|update|delete"]}
                    )
                body = validate(request.get_json(silent=True), models.PatchedLabeledDataRequest)
                if action == "create":
                    _refuse_ids(body)
                written = self._write(tid, body, shapes, tags, lo, hi, action)
            self._touch(tid, lo, hi, gt, written)  # CVAT 2.73: the version stays 0
            return reply({"version": self.versions[tid], **written, "tracks": [], "intervals": []})

    def _labeled_data(
        self, tid: int, shapes: dict[int, Any], tags: dict[int, Any], lo: int, hi: int
    ) -> dict[str, Any]:
        return {
            "version": self.versions[tid],
            "tags": [t for t in tags.values() if lo <= t["frame"] <= hi],
            "shapes": [s for s in shapes.values() if lo <= s["frame"] <= hi],
            "tracks": [],
            "intervals": [],
        }

    @staticmethod
    def _drop(shapes: dict[int, Any], tags: dict[int, Any], lo: int, hi: int) -> None:
        for store in (shapes, tags):
            for k in [k for k, v in store.items() if lo <= v["frame"] <= hi]:
                del store[k]

    def _write(
        self, tid: int, body: Any, shapes: dict[int, Any], tags: dict[int, Any], lo: int, hi: int, action: str
    ) -> dict[str, list[dict[str, Any]]]:
        """Apply one create/update/delete; all objects are checked before anything is stored."""
        label_ids = {lb["id"] for lb in self.labels.values()}
        task = self.tasks[tid]
        valid_labels = {
            lb["id"]
            for lb in self.labels.values()
            if (lb.get("task_id") == tid)
            or (task["project_id"] and lb.get("project_id") == task["project_id"])
        }
        out: dict[str, list[dict[str, Any]]] = {"shapes": [], "tags": []}
        for kind, store in (("shapes", shapes), ("tags", tags)):
            objs = [o.to_dict() for o in getattr(body, kind, [])]
            for o in objs:
                if not lo <= o["frame"] <= hi:
                    raise HttpError(400, {"detail": f"The frame {o['frame']} is out of range [{lo}, {hi}]"})
                if o["label_id"] not in valid_labels:
                    known = "another task's" if o["label_id"] in label_ids else "an unknown"
                    raise HttpError(400, {"detail": f"label_id {o['label_id']} is {known} label"})
                if action != "create" and o.get("id") not in store:
                    raise HttpError(400, {"detail": f"{kind[:-1]} id {o.get('id')} does not exist"})
            for o in objs:
                if action == "delete":
                    store.pop(o["id"])
                    continue
                full = self._full(kind, o, store.get(o.get("id")) if action == "update" else None)
                store[full["id"]] = full
                out[kind].append(full)
        return out

    def _full(self, kind: str, o: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        """The object as CVAT stores and returns it (LabeledShape / LabeledImage with defaults)."""
        base: dict[str, Any] = (
            dict(old)
            if old
            else {
                "attributes": [],
                "frame": 0,
                "group": 0,
                "id": next(self._ids["shape"]),
                "label_id": 0,
                "source": "manual",
            }
        )
        if kind == "shapes" and not old:
            base.update(
                elements=[],
                occluded=False,
                outside=False,
                rotation=0.0,
                score=1.0,
                z_order=0,
                points=[],
                type="rectangle",
            )
        o = {k: v for k, v in o.items() if k != "id"}
        base.update(o)
        given = {int(a["spec_id"]): a["value"] for a in base["attributes"]}
        specs = (self.labels.get(base["label_id"]) or {}).get("attributes") or []
        for a in specs:  # every attribute of the label, those not given at their default
            given.setdefault(int(a["id"]), a.get("default_value", ""))
        base["attributes"] = [{"spec_id": k, "value": v} for k, v in given.items()]
        if kind == "shapes":
            base["points"] = [float(p) for p in base["points"]]
        return base

    def _touch(
        self, tid: int, lo: int, hi: int, gt: int | None, written: dict[str, Any] | None = None
    ) -> None:
        now = self.now()
        self.tasks[tid]["updated_date"] = now
        frames = {o["frame"] for objs in (written or {}).values() for o in objs} or set(range(lo, hi + 1))
        for job in self.jobs.values():
            if job["task_id"] != tid:
                continue
            if gt is not None and job["id"] != gt:
                continue
            if gt is None and job["type"] == "ground_truth":
                continue
            if any(job["start_frame"] <= f <= job["stop_frame"] for f in frames):
                job["updated_date"] = now  # the state stays as it was: "new" after writes too

    # ------------------------------------------------------------------ QA

    def list_issues(self) -> Response:
        issues = self._visible(list(self.issues.values()), "issue")
        if "task_id" in request.args:
            jobs = {j for j, job in self.jobs.items() if str(job["task_id"]) == request.args["task_id"]}
            issues = [i for i in issues if i["job"] in jobs]
        issues = [dict(i, frame_id=i["frame"], job_id=i["job"]) for i in issues]
        page = self._filtered(issues, ("job_id", "frame_id", "resolved", "id"))
        return self._page([{k: v for k, v in i.items() if k not in ("frame_id", "job_id")} for i in page])

    def create_issue(self) -> Response:
        spec = validate(request.get_json(silent=True), models.IssueWriteRequest)
        user = request.environ["peer.user"]
        job = self._get(self.jobs, spec.job, "job")
        if not self.can_view_job(user, job):
            raise HttpError(403, {"detail": PERMISSION_DENIED})
        with self._lock:
            iid = self.add_issue(
                job["id"], spec.frame, spec.message, user, bool(getattr(spec, "resolved", False))
            )
            return reply(self.issues[iid], 201)

    def patch_issue(self, iid: int) -> Response:
        """Resolving or assigning dates the issue; the job's date stays."""
        spec = validate(request.get_json(silent=True), models.PatchedIssueWriteRequest)
        user = request.environ["peer.user"]
        with self._lock:
            issue = self._get(self.issues, iid, "issue")
            if not self.can_reply(user, issue):
                raise HttpError(403, {"detail": PERMISSION_DENIED})
            if hasattr(spec, "resolved"):
                issue["resolved"] = bool(spec.resolved)
            if hasattr(spec, "assignee"):
                name = next((n for n, u in self.users.items() if u["id"] == spec.assignee), None)
                issue["assignee"] = self._user_ref(name)
            if hasattr(spec, "position"):
                issue["position"] = list(spec.position)
            issue["updated_date"] = self.now()
            return reply(issue)

    def create_comment(self) -> Response:
        spec = validate(request.get_json(silent=True), models.CommentWriteRequest)
        user = request.environ["peer.user"]
        with self._lock:
            issue = self._get(self.issues, spec.issue, "issue")
            if not self.can_reply(user, issue):
                raise HttpError(403, {"detail": PERMISSION_DENIED})
            cid = self.add_comment(issue["id"], spec.message, user)
            return reply(self.comments[cid], 201)

    def list_comments(self) -> Response:
        comments = [
            dict(c, issue_id=c["issue"], job_id=self.issues[c["issue"]]["job"])
            for c in self._visible(list(self.comments.values()), "comment")
        ]
        page = self._filtered(comments, ("issue_id", "job_id", "id"))
        return self._page([{k: v for k, v in c.items() if k not in ("issue_id", "job_id")} for c in page])

    def list_reports(self) -> Response:
        reports = self._visible(list(self.reports.values()), "report")
        return self._page(self._filtered(reports, ("task_id", "job_id", "project_id", "target", "parent_id")))


# ---------------------------------------------------------------------- small functions


def _refuse_ids(body: Any) -> None:
    """CVAT 2.73 refuses an ``id`` on objects it is asked to create, naming each one."""
    errors = {}
    for kind in ("shapes", "tags", "tracks"):
        objs = [o.to_dict() for o in getattr(body, kind, [])]
        if any("id" in o for o in objs):
            errors[kind] = [{"id": ["must be absent"]} if "id" in o else {} for o in objs]
    if errors:
        raise HttpError(400, errors)


class _BigFormRequest(Request):
    max_form_parts = 100_000


def _field(obj: dict[str, Any], name: str) -> Any:
    v = obj.get(name)
    if isinstance(v, dict) and "username" in v:  # assignee/owner filter by username, as CVAT does
        return v["username"]
    return v


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, "") if v is None else (1, v)


def _coerce(a: Any, b: Any) -> tuple[Any, Any]:
    for x, y in ((a, b), (b, a)):
        if isinstance(x, str) and isinstance(y, str) and re.match(r"\d{4}-\d\d-\d\dT", x):
            try:
                return _parse_dt(a), _parse_dt(b)
            except ValueError:
                break
    return a, b


def _parse_dt(s: str) -> datetime:
    d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _json_logic(rule: Any, obj: dict[str, Any]) -> Any:
    """The JSON-logic subset CVAT's ``filter`` parameter supports (and/or/!/comparisons/in)."""
    if not isinstance(rule, dict):
        return rule
    ((op, args),) = rule.items()
    if op == "var":
        return _field(obj, args)
    args = args if isinstance(args, list) else [args]
    if op == "and":
        return all(_json_logic(a, obj) for a in args)
    if op == "or":
        return any(_json_logic(a, obj) for a in args)
    if op == "!":
        return not _json_logic(args[0], obj)
    vals = [_json_logic(a, obj) for a in args]
    if op == "in":
        return vals[0] in vals[1]
    a, b = _coerce(vals[0], vals[1])
    if op in ("==", "!="):
        return (a == b) == (op == "==")
    if a is None or b is None:
        return False
    ops = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}
    if op not in ops:
        raise HttpError(400, {"detail": f"filter: unsupported operation {op!r}"})
    return ops[op]
