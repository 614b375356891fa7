"""The QA sessions page (/qa): run a scenario against a room of this app, watch it, browse runs.

A run is `python -m videochat qa run … --app-url <this app>` in a background process (the same
runner as the command line and CI): it opens its own headless browsers and asks this app for
bots, so people may sit in the room meanwhile. Progress lines and, at the end, the verdicts are
read from its log and JSON report; finished runs are in MongoDB (`RunStore`). Outside
development mode the page needs the admin token.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import streamlit as st

from videochat.exceptions import VideoChatError
from videochat.qa.background import BackgroundRun, launch_run
from videochat.qa.report import RunStore, render_html
from videochat.qa.scenario import builtin_scenarios
from videochat.qa.scenario_errors import ScenarioError
from videochat.ui.admin import admitted
from videochat.ui.state import get_services, get_settings

logger = logging.getLogger(__name__)



@st.cache_resource
def _jobs() -> list[BackgroundRun]:
    """Runs started from this server process (kept across pages and sessions)."""
    return []


def render() -> None:
    st.title("QA sessions")
    if not admitted("QA"):
        return
    try:
        scenarios = builtin_scenarios()
    except ScenarioError as exc:
        st.error(f"A built-in scenario is broken: {exc}")
        return
    _new_run(scenarios)
    _bots()
    _live()
    _history()


def _app_url() -> str:
    port = st.get_option("server.port") or 8501
    return f"http://127.0.0.1:{port}"


def _reports_dir() -> Path:
    return Path(get_settings().state_dir).resolve() / "qa-reports"


def _new_run(scenarios: dict[str, Any]) -> None:
    st.subheader("Run a scenario")
    names = list(scenarios)
    with st.form("qa-run"):
        name = st.selectbox("Scenario", names,
                            format_func=lambda n: f"{n}: {scenarios[n].description}")
        room = st.text_input("Room (empty: a fresh room for this run)", "")
        go = st.form_submit_button("Run", type="primary")
    chosen = scenarios[name] if name else None
    if chosen is not None:
        with st.expander("What this scenario does"):
            st.code(chosen.summary())
            st.json(chosen.model_dump(mode="json"), expanded=False)
    if go and name:
        try:
            job = launch_run(name, app_url=_app_url(),
                             state_dir=Path(get_settings().state_dir).resolve(),
                             reports_dir=_reports_dir(), room=room.strip() or None)
        except (OSError, VideoChatError) as exc:
            st.error(f"Could not start the run: {exc}")
            return
        _jobs().append(job)
        st.success(f"Started {name} (pid {job.proc.pid}).")


def _bots() -> None:
    """A bot in any room of this server: a demo needs only one person."""
    from videochat.bots.host import add_bot, host_for, remove_bot
    from videochat.ui.state import get_runtime

    if not st.toggle("Bots: synthetic participants (moving test pattern with a timestamp, "
                     "and a tone)", key="qa-bots"):
        return
    with st.container(border=True):
        try:
            rt = get_runtime()
            bots = host_for(rt.registry).bots()
        except Exception as exc:  # noqa: BLE001 - the page works without the media runtime
            st.caption(f"Bots are not available in this process: {exc}")
            return
        c1, c2, c3 = st.columns([2, 2, 1])
        room = c1.text_input("Room", key="qa-bot-room")
        name = c2.text_input("Bot name", "bot", key="qa-bot-name")
        if c3.button("Add a bot", disabled=not room.strip()):
            try:
                me = add_bot(rt, room.strip(), name.strip() or "bot")
                st.success(f"{me.name} joined {me.room}.")
            except VideoChatError as exc:
                st.error(str(exc))
        for bot in bots:
            p = bot.participant
            cols = st.columns([4, 1])
            cols[0].write(f"{p.name} in {p.room}: {bot.video.frames_sent} frames sent")
            if cols[1].button("Remove", key=f"rm-{p.id}"):
                remove_bot(rt, p.id)
                st.rerun()


@st.fragment(run_every=2)
def _live() -> None:
    jobs = _jobs()
    if not jobs:
        return
    st.subheader("Runs from this server")
    for i, job in enumerate(reversed(jobs[-10:])):
        code = job.returncode
        state = ("running" if code is None else "passed" if code == 0
                 else "failed" if code == 1 else f"error (exit {code})")
        started = datetime.fromtimestamp(job.started_at).strftime("%H:%M:%S")
        with st.expander(f"{job.scenario} · {job.room or 'own room'} · {started} · {state}",
                         expanded=i == 0):
            lines = job.progress()
            if lines:
                st.code("\n".join(lines), language=None)
            doc = job.report_doc() if code is not None else None
            if doc is not None:
                _verdicts(doc)
                _downloads(doc, job.report, key=f"job-{id(job)}")
            elif code is None and st.button("Stop", key=f"stop-{id(job)}"):
                job.stop()


def _verdicts(doc: dict[str, Any]) -> None:
    if doc.get("error"):
        st.error(f"Run error: {doc['error']}")
    rows = [{"objective": a["name"], "verdict": "pass" if a["passed"] else "FAIL",
             "measured": a["measured"], "threshold": a["threshold"], "detail": a["detail"]}
            for a in doc.get("assertions", [])]
    (st.success if doc.get("passed") else st.error)(
        f"{doc['scenario']['name']}: {'passed' if doc.get('passed') else 'FAILED'}")
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
    for note in doc.get("notes") or []:
        st.caption(note)


def _downloads(doc: dict[str, Any], json_path: Path | None, key: str) -> None:
    import json

    c1, c2 = st.columns(2)
    raw = json.dumps({k: v for k, v in doc.items() if k not in ("_id", "started_at",
                                                                "report_json", "report_html")},
                     indent=2, default=str)
    c1.download_button("JSON report", raw, file_name=f"{doc['run_id']}.json",
                       mime="application/json", key=f"{key}-json")
    html_file = json_path.with_suffix(".html") if json_path else None
    page = (html_file.read_text(encoding="utf-8") if html_file and html_file.is_file()
            else render_html(doc))
    c2.download_button("HTML report (charts)", page, file_name=f"{doc['run_id']}.html",
                       mime="text/html", key=f"{key}-html")


def _history() -> None:
    st.subheader("Past runs")
    try:
        store = RunStore(get_services().db)
        runs = store.list(50)
    except VideoChatError as exc:
        st.warning(f"Run history unavailable: {exc}")
        return
    if not runs:
        st.caption("No run stored yet.")
        return
    rows = [{"run": r["run_id"], "scenario": r["scenario"]["name"],
             "verdict": ("running" if r.get("status") == "running"
                         else "pass" if r.get("passed") else "FAIL"), "room": r.get("room"),
             "started": r["timings"]["started_at"][:19].replace("T", " "),
             "failed objectives": ", ".join(a["name"] for a in r.get("assertions", [])
                                            if not a["passed"]) or r.get("error") or ""}
            for r in runs]
    st.dataframe(rows, hide_index=True, width="stretch")
    run_id = st.selectbox("Open a run", [r["run_id"] for r in runs])
    if not run_id:
        return
    try:
        doc = store.get(run_id)
    except VideoChatError as exc:
        st.error(str(exc))
        return
    _verdicts(doc)
    path = doc.get("report_json")
    _downloads(doc, Path(path) if path else None, key=f"hist-{run_id}")
    st.caption(f"Report files: {html.escape(str(path))}" if path else "No report file kept.")
