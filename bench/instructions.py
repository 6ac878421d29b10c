"""Progressive delivery's CPU work per request, counted rather than timed.

A few per cent of throughput is below what a shared two-core virtual machine can time: the
rounds of one phase of the HTTP measurement (bench.rollout) differ by 20-30 %. Instruction
counts barely move from run to run (a 1,000-row batch within +-0.3 %; /predict within a few
per cent, as concurrent callers fall into micro-batches differently), so this measures the
same phases by the work they do:
the real app (``app.main``, one process, the registry's champion and challenger, the same
settings as the HTTP server) runs under Valgrind's Callgrind, which counts the instructions
executed by every thread (request handling, the inference thread, the prediction log writer,
shadow scoring) while the measured requests run, and simulates the caches, so a cost that
shows in memory traffic rather than instructions shows too (``LL misses``: last-level cache
misses, ~100 ns each on real hardware). Start-up, model loading and warm-up are not counted
(client requests in ``callgrind_ctl.c`` switch counting on and off around each window).

Requests go straight to the ASGI app (no HTTP client in the process being counted), with the
shapes of the HTTP section: /predict from 32 concurrent callers with an ``X-Routing-Key``
cycling over 1,000 customers, /predict/batch from 2 callers, 1,000 customers each with a
``customer_id``. Each window waits until the log writer and the shadow scorer are idle, so
the work a request causes off its own path is counted with it.

What runs by the clock is scaled by Callgrind's ~50x slowdown, so a request pays for it as
deployed, whatever the machine's load: log writes start every ``PREDICTION_LOG_BATCH_SIZE``
predictions, as at the load the HTTP section serves (the 0.5 s flush interval, meant for a
trickle, would start ten times as many per request); the interpreter's GIL switch interval
is 5 ms times that slowdown; the wait for the writer at a window's end polls from a thread,
not by event-loop turns. Kernel work (system calls) is not counted; the HTTP section keeps
the end-to-end figure.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.asgi import post_scope
from bench.servers import ROOT

CTL_SOURCE = Path(__file__).with_name("callgrind_ctl.c")
# A fixed cache model (a common server core and an 8 MiB last-level slice), not the host's:
# the same counts on any machine.
CACHES = ("--I1=32768,8,64", "--D1=32768,8,64", "--LL=8388608,16,64")
EVENTS = ("Ir", "ILmr", "DLmr", "DLmw")
TRIGGER = "desc: Trigger: Client Request: "  # a dump's label, as measure_stop named it
PREDICT_CALLERS = 32
BATCH_CALLERS = 2
ROUTING_KEYS = 1000
UNCOUNTED_LATENCY_MS = 1e9
SWITCH_INTERVAL = 0.25  # seconds: the interpreter's 5 ms times Callgrind's ~50x slowdown


class InstructionCountError(RuntimeError):
    """Callgrind or a compiler is missing, or the counted run failed; the message says which."""


def tools() -> tuple[str, str]:
    """valgrind and a C compiler, or a clear error naming what to install."""
    valgrind, cc = shutil.which("valgrind"), shutil.which("cc") or shutil.which("gcc")
    if valgrind is None or cc is None:
        missing = " and ".join(
            name for name, path in (("valgrind", valgrind), ("cc (gcc)", cc)) if path is None
        )
        raise InstructionCountError(
            f"counting instructions needs {missing}: apt-get install valgrind gcc"
        )
    return valgrind, cc


def measure(
    store: Path,
    env: dict[str, str],
    versions: dict[str, str],
    bodies: dict[str, Path],
    phases: tuple[str, ...],
    requests: dict[str, int],
) -> dict[str, Any]:
    """Instructions and LL misses per request, per phase and path, and each phase's extra
    work over ``off``. `env`: the HTTP server's environment (registry, store); `versions`:
    model name, champion and challenger; `requests`: per path, requests per caller."""
    valgrind, cc = tools()
    work = store / "instructions"
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob("callgrind.out.*"):  # an earlier run's windows are not this one's
        stale.unlink()
    library = work / "callgrind_ctl.so"
    built = subprocess.run(
        [cc, "-shared", "-fPIC", "-O1", "-o", str(library), str(CTL_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise InstructionCountError(f"cc could not build {CTL_SOURCE.name}:\n{built.stderr}")
    spec = work / "spec.json"
    report = work / "driver.json"
    spec.write_text(
        json.dumps(
            {
                "library": str(library),
                "versions": versions,
                "bodies": {path: str(body) for path, body in bodies.items()},
                "phases": sequence(phases),
                "requests": requests,
                "report": str(report),
            }
        )
    )
    started = time.monotonic()
    done = subprocess.run(
        [
            valgrind,
            "--tool=callgrind",
            "--instr-atstart=no",
            "--cache-sim=yes",
            *CACHES,
            f"--callgrind-out-file={work}/callgrind.out.%p",
            sys.executable,
            "-m",
            "bench.instructions",
            str(spec),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            **env,
            # no watcher, no lifecycle tick inside a window: phases are applied by the driver
            "MODEL_WATCH_INTERVAL": "0",
            "MODEL_SYNC_INTERVAL": "3600",
            # writes by batch size, as at load (the module's docstring)
            "PREDICTION_LOG_FLUSH_INTERVAL": "3600",
            "LOG_LEVEL": "WARNING",
        },
        capture_output=True,
        text=True,
        timeout=7200,
        check=False,
    )
    if done.returncode != 0:
        raise InstructionCountError(
            f"the counted run exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}"
        )
    counted = read_dumps(work)
    windows = json.loads(report.read_text())
    return summarise(counted, windows, sequence(phases), time.monotonic() - started)


def read_dumps(directory: Path) -> dict[str, dict[str, int]]:
    """Each measured window's event totals, by the label its dump was written with."""
    found: dict[str, dict[str, int]] = {}
    for path in sorted(directory.glob("callgrind.out.*.*")):
        label, events, totals = None, None, None
        with path.open() as lines:
            for line in lines:
                if line.startswith(TRIGGER):
                    label = line.removeprefix(TRIGGER).strip()
                elif line.startswith("events: "):
                    events = line.split()[1:]
                elif line.startswith("totals: "):
                    totals = [int(v) for v in line.split()[1:]]
                    break
        if label is None or events is None or totals is None:
            continue
        found[label] = dict(zip(events, totals, strict=False))
    return found


def sequence(phases: tuple[str, ...]) -> list[str]:
    """The windows' order: ``off`` before and after every other phase (off, shadow, off,
    canary, off, ...), so each phase is judged against the mean of the two ``off`` windows
    around it. The process is not the same at the end of a run as at its start (its
    prediction log has grown, so has its heap): without the brackets that drift would be
    charged to whichever phase comes last."""
    order = ["off"]
    for phase in phases:
        if phase != "off":
            order += [phase, "off"]
    return order


def window_label(index: int, phase: str, path: str) -> str:
    """A window's label (its dump's trigger): its place in the sequence, phase and path."""
    return f"{index}.{phase}/{path}"


def summarise(
    counted: dict[str, dict[str, int]],
    windows: dict[str, dict[str, Any]],
    order: list[str],
    seconds: float,
) -> dict[str, Any]:
    """Per phase and path: instructions and LL misses per request, and the extra over the
    mean of the ``off`` windows around it (`order`: see `sequence`). ``off`` reports the mean
    of its windows and how far they drifted from first to last. A window with no dump or no
    answers is an error, never a zero."""
    out: dict[str, Any] = {}
    for path in ("predict", "batch"):
        figures: list[dict[str, Any]] = []
        for index, phase in enumerate(order):
            label = window_label(index, phase, path)
            if label not in counted or label not in windows:
                raise InstructionCountError(f"no count for {label}: the driver did not finish it")
            window, events = windows[label], counted[label]
            answered = window["requests"]
            figures.append(
                {
                    "requests": answered,
                    "rows": window["rows"],
                    "challenger_rows": window["challenger_rows"],
                    "rows_per_model_call": window["rows_per_model_call"],
                    "instructions_per_request": events["Ir"] / answered,
                    "ll_misses_per_request": sum(events.get(e, 0) for e in EVENTS[1:]) / answered,
                }
            )
        offs = [f for phase, f in zip(order, figures, strict=True) if phase == "off"]
        per_phase: dict[str, Any] = {
            "off": {
                **offs[0],
                "instructions_per_request": _mean(offs, "instructions_per_request"),
                "ll_misses_per_request": _mean(offs, "ll_misses_per_request"),
                "windows": len(offs),
                "drift": offs[-1]["instructions_per_request"] / offs[0]["instructions_per_request"]
                - 1,
            }
        }
        for index, phase in enumerate(order):
            if phase == "off":
                continue
            if order[index - 1] != "off" or index + 1 >= len(order) or order[index + 1] != "off":
                raise InstructionCountError(f"{phase}: not between two off windows in {order}")
            around = [figures[index - 1], figures[index + 1]]
            phase_figures = figures[index]
            for key, extra in (
                ("instructions_per_request", "extra_instructions"),
                ("ll_misses_per_request", "extra_ll_misses"),
            ):
                phase_figures[extra] = phase_figures[key] / _mean(around, key) - 1
            phase_figures["baseline_instructions_per_request"] = _mean(
                around, "instructions_per_request"
            )
            per_phase[phase] = phase_figures
        out[path] = per_phase
    return {"tool": "valgrind callgrind (--cache-sim=yes)", "seconds": seconds, **out}


def _mean(figures: list[dict[str, Any]], key: str) -> float:
    return sum(f[key] for f in figures) / len(figures)


# --------------------------------------------------------------------------- the driver


async def _call(app: Any, path: str, body: bytes, key: str | None) -> str:
    """One request to the ASGI app; the answering role (x-model-role). Not 200: an error."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [] if key is None else [(b"x-routing-key", key.encode())]
    await app(post_scope(path, body, headers), receive, send)
    start = sent[0]
    if start["status"] != 200:
        raise InstructionCountError(f"{path} answered {start['status']}: {sent[1:2]}")
    return dict(start["headers"]).get(b"x-model-role", b"").decode()


async def _window(
    app: Any, path: str, body: bytes, callers: int, each: int, keyed: bool
) -> tuple[int, list[str]]:
    """`callers` concurrent callers sending `each` requests; the roles that answered."""
    counter = iter(range(callers * each))

    async def caller() -> list[str]:
        roles = []
        for _ in range(each):
            key = f"customer-{next(counter) % ROUTING_KEYS}" if keyed else None
            roles.append(await _call(app, path, body, key))
        return roles

    answered = await asyncio.gather(*(caller() for _ in range(callers)))
    return callers * each, [role for roles in answered for role in roles]


async def _idle(service: Any) -> None:
    """Until the prediction log and the shadow scorer have nothing queued. Watched from a
    thread, so the event loop waits without polling: a poll there is an event-loop turn, and
    how many the wait takes follows how fast the machine runs the writer (its load), not the
    work the requests left."""
    await asyncio.to_thread(_wait_idle, service)


def _wait_idle(service: Any) -> None:
    writer = service.log_writer
    calm = 0
    for _ in range(12000):
        if writer is not None and not service.rollout.shadow.queued:
            writer.write_now()  # the rest below the write batch (no interval under Callgrind)
        idle = not service.rollout.shadow.queued and (writer is None or writer.idle())
        calm = calm + 1 if idle else 0
        if calm == 2:  # twice in a row: the scorer's last rows reached the writer, written
            return
        time.sleep(0.005)
    raise InstructionCountError("the log writer or the shadow scorer never went idle")


async def _drive(spec: dict[str, Any]) -> None:
    from app.main import create_app
    from bench.rollout import apply_phase
    from churn.registry import client

    library = ctypes.CDLL(spec["library"])
    library.measure_stop.argtypes = [ctypes.c_char_p]
    versions = spec["versions"]
    bodies = {path: Path(body).read_bytes() for path, body in spec["bodies"].items()}
    registry = client(os.environ["MLFLOW_TRACKING_URI"])
    app = create_app()
    windows: dict[str, dict[str, Any]] = {}
    async with app.router.lifespan_context(app):
        service = app.state.service
        for _ in range(6000):
            if service.model is not None:
                break
            await asyncio.sleep(0.05)
        else:
            raise InstructionCountError(f"no model: {service.last_error}")
        for index, phase in enumerate(spec["phases"]):
            apply_phase(
                phase,
                registry,
                versions["name"],
                versions["champion"],
                versions["challenger"],
                # every call is ~50x slower under Callgrind: the latency guardrail would roll
                # the canary back; the others judge as deployed
                guardrails={"max_p95_latency_ms": UNCOUNTED_LATENCY_MS},
            )
            await service.rollout.sync(service.model)
            applied = service.rollout.report()
            expected = None if phase == "off" else ("shadow" if phase == "shadow" else "canary")
            if applied["stage"] != expected:
                raise InstructionCountError(f"{phase}: the service applies {applied}")
            challenger = service.rollout.current
            if challenger is not None and challenger.model.backend != service.model.backend:
                # e.g. a compiled forest beside scikit-learn: a slower model, not routing's cost
                raise InstructionCountError(
                    f"{phase}: the challenger runs on {challenger.model.backend}, the champion "
                    f"on {service.model.backend}: their costs are not comparable"
                )
            for path, callers, keyed in (
                ("predict", PREDICT_CALLERS, True),
                ("batch", BATCH_CALLERS, False),
            ):
                route = "/predict" if path == "predict" else "/predict/batch"
                body = bodies[path]
                each = spec["requests"][path]
                await _window(app, route, body, callers, max(1, each // 2), keyed)  # warm-up
                await _idle(service)
                batcher = service.batcher
                calls, scored = batcher.calls, batcher.rows
                library.measure_start()
                requests, roles = await _window(app, route, body, callers, each, keyed)
                await _idle(service)
                label = window_label(index, phase, path)
                library.measure_stop(label.encode())
                calls, scored = batcher.calls - calls, batcher.rows - scored
                rows = requests * (1 if path == "predict" else len(json.loads(body)["customers"]))
                windows[label] = {
                    "requests": requests,
                    "rows": rows,
                    "challenger_rows": roles.count("challenger") if path == "predict" else None,
                    "roles": sorted(set(roles)),
                    # how the micro-batcher grouped them (fewer rows per call: more fixed cost)
                    "model_calls": calls,
                    "rows_per_model_call": scored / calls if calls else None,
                }
                if phase in ("canary", "routing") and not set(roles) & {"challenger", "mixed"}:
                    raise InstructionCountError(f"{phase}/{path}: the challenger answered nothing")
    Path(spec["report"]).write_text(json.dumps(windows))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sys.setswitchinterval(SWITCH_INTERVAL)  # scaled as deployed (the module's docstring)
    asyncio.run(_drive(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
