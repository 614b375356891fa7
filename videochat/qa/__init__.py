"""QA sessions: scripted fault scenarios run against a live call, ending in a verdict and a report.

What exists (no dependency on the call, faults, metrics or chat internals):

- `videochat.qa.scenario`: `Scenario` (TOML, pydantic), `load_scenario`, `builtin_scenarios`,
  `find_scenario`; `FaultStep.to_command(room)` gives the fault command of issue 5.
- `videochat.qa.assertions`: `RunMeasurements` in, `evaluate(...)` → `AssertionResult`s out;
  and the pure steps from what the call recorded to `RunMeasurements`:
  `fault_windows_from_events`, `reconnect_times_from_events`, `quality_times_from_events`
  (with `[q.name for q in videochat.call.quality.LADDER]`), `video_resumed_from_samples`,
  `chat_ledger`.
- `videochat.qa.report`: `RunResult`, `save_report(result, path_json)` → JSON + HTML with plotly
  charts and fault bands, `RunStore(db)` for the `qa_runs` collection.
- `videochat.media.bot_tracks`: `BotVideoTrack`, `BotAudioTrack`, `decode_stamp`, `LatencyProbe`.

Runner sketch (`videochat/qa/runner.py`, not built yet) and what it needs from the other modules::

    def run_scenario(scenario, settings, *, room=None, clock=time.monotonic) -> RunResult:
        run_id = new_run_id(); room = room or scenario.room_for_run(run_id)
        app    = ensure_app(settings)          # reuse a running app (discovery file of
                                               # services/embedded) or start one: qa/harness.py
                                               # (AppProcess, NetNamespace, Browser) does that
        for p in scenario.participants:        # join; wait until each one's media flows
            "browser": Playwright Chromium (fake camera) opens
                       f"{app.url}/call?room={room}&name={p.name}"
            "bot":     NEEDS (call/relay): a way to add a server-side participant to a room, in
                       the app process, e.g.
                       `rooms.add_bot(room, name, BotVideoTrack(), BotAudioTrack())`,
                       reachable from outside the process (a Redis command like the faults'
                       stream), the same path the call page's "add a bot" button uses.
        t0 = clock()                           # t = 0 of every series and fault window
        for step in scenario.timeline (at step.at_s):
            NEEDS (faults): `FaultControl(redis).inject(step.to_command(room)) -> fault_id`,
                            acknowledged by the media process, and the actual started/ended
                            times (`fault_started` / `fault_ended` events) → `FaultWindow`s.
            redis_outage / mongo_outage: NEEDS the same control plane (the faults module kills and
                            restarts the embedded server, or blocks the client).
        chat (if scenario.chat): send `messages_per_second` from the senders through the app's
            chat path; NEEDS (chat): `ChatQueue.send(room, sender, text, client_msg_id)` and, at the
            end, a ledger: per receiver the client_msg_ids delivered, and those persisted in Mongo.
        after duration_s, collect RunMeasurements from MongoDB, filtered by room and [t0, t_end]
        (events as `CallEvent`s; the helpers above turn them into measurements):
            NEEDS (metrics_store/diagnostics): per-leg samples with fps, rtt_ms, quality level
                  (→ Sample(t_s, series="sender→receiver", value)); events reconnect_started /
                  reconnect_succeeded / reconnect_failed (→ reconnect_times_s), quality_changed
                  (→ quality_step_down_s / back_to_full_quality_s relative to each FaultWindow),
                  the fps samples again (→ video_resumed_s), and a count of samples taken vs.
                  stored (→ metrics_lost) from the metrics outage buffer.
        results = evaluate(scenario.assertions, measurements)
        return RunResult(...); then save_report(result, path) and RunStore(db).save(result, ...)

    CLI (`videochat/__main__.py`, owned by whoever owns the CLI):
        qa list              → for s in builtin_scenarios().values(): print(s.summary())
        qa run NAME|FILE --report out.json → find_scenario(arg); run; save_report; exit 0 if
                               result.passed else 1; ScenarioError / NotFound → message, exit 2.

A run with a runner error (app did not start, a participant never joined) is still reported:
`RunResult(error=...)`, verdict failed, so CI and the /qa page show why.
"""

from __future__ import annotations

from videochat.qa.assertions import (
    AssertionResult,
    ChatLedger,
    FaultWindow,
    RunMeasurements,
    Sample,
    TimelineEvent,
    chat_ledger,
    evaluate,
    fault_windows_from_events,
    quality_times_from_events,
    reconnect_times_from_events,
    video_resumed_from_samples,
)
from videochat.qa.report import RunResult, RunStore, new_run_id, save_report

__all__ = [
    "AssertionResult", "ChatLedger", "FaultWindow", "RunMeasurements", "RunResult", "RunStore",
    "Sample", "TimelineEvent", "chat_ledger", "evaluate", "fault_windows_from_events",
    "new_run_id", "quality_times_from_events", "reconnect_times_from_events", "save_report",
    "video_resumed_from_samples",
]
