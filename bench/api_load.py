"""The API under a dashboard's and a pipeline's polling load, against a bare FastAPI app in the same run.

    python bench/api_load.py                           # Postgres and SQLite, 200 pollers, 20 s each
    python bench/api_load.py --backend sqlite --seconds 5 --pollers 50

For each backend it starts the real API as ``layerprune serve`` does (uvicorn, migrations, a fresh
database: a uniquely named one on 127.0.0.1:5432 for Postgres, a file in a temporary folder for
SQLite), creates jobs through the API and then, one load at a time:

- ``get``:    N concurrent pollers of ``GET /v1/jobs/{id}``, each sending its next request as soon as
              the last one is answered (keep-alive, no think time);
- ``list``:   the same with ``GET /v1/jobs?limit=50``;
- ``stream``: S concurrent ``GET /v1/jobs/{id}/events`` server-sent-event streams held open for the
              whole run, while 20 pollers measure the latency of ``GET /v1/jobs/{id}`` beside them.

The baseline is a bare FastAPI app (one ``async def`` route per target answering the very JSON the
real API answered, so the same size) served with the same uvicorn options (``api/server.py``), under
the same loads in the same run; ``get_bare_sync`` is the same route as a plain ``def``, which FastAPI
runs on a worker thread as it does the API's routes. The load comes from a separate process (asyncio, raw HTTP/1.1 on
uvloop: tens of microseconds per request, so it is not what limits the figures on 2 cores); its
own CPU use is reported, as are the server's and the load average. Loopback only; every run is
bounded in time (``--seconds``) and count (at most 1000 pollers or streams; requests time out after
``--timeout`` seconds and count as timeouts). Prints ONE JSON line.

Postgres extra: the most connections seen ``idle in transaction`` during each load (sampled from
``pg_stat_activity`` every 0.2 s), the symptom of issue 11.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from layerprune.processes import stop_group

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("LAYERPRUNE_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
MAX_CONNECTIONS = 1000
SPEC = {"model": "bundled:smollm2-135m-instruct", "prune": {"metric": "reverse_order", "ratio": 0.25},
        "metadata": {"pipeline": "bench"}}


# ------------------------------------------------------------------ load generator (own process)


def _request(path: str, key: str, accept: str | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}"]
    if accept:
        lines.append(f"Accept: {accept}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response with a Content-Length body; (status, server asked to close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    i = lower.find(b"content-length:")
    length = int(lower[i + 15:lower.find(b"\r\n", i)]) if i >= 0 else 0
    if length:
        await reader.readexactly(length)
    return status, b"connection: close" in lower


class Tally:
    def __init__(self) -> None:
        self.ok = 0
        self.non_200 = 0
        self.errors = 0  # connection refused/reset, malformed answers
        self.timeouts = 0
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}

    def summary(self, seconds: float) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return {"requests": self.ok + self.non_200, "ok": self.ok, "rps": round(self.ok / seconds, 1),
                "errors": self.errors + self.non_200, "non_200": self.statuses, "timeouts": self.timeouts,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


async def _poller(port: int, request: bytes, start: float, deadline: float, timeout: float, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while loop.time() < deadline:
        t0 = loop.time()
        try:
            async with asyncio.timeout(min(timeout, max(0.001, deadline + timeout - t0))):
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                conn[1].write(request)
                status, close = await _read_response(conn[0])
        except TimeoutError:
            tally.timeouts += 1
            close, status = True, None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            tally.errors += 1
            close, status = True, None
            await asyncio.sleep(0.05)  # a refused connection must not spin
        t1 = loop.time()
        if status is not None and t0 >= start:  # answers to requests sent in the warm-up are not counted
            tally.latencies.append(t1 - t0)
            if status == 200:
                tally.ok += 1
            else:
                tally.non_200 += 1
                tally.statuses[str(status)] = tally.statuses.get(str(status), 0) + 1
        if close and conn is not None:
            conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


class StreamTally:
    def __init__(self) -> None:
        self.opened = 0
        self.held = 0  # still open and answering when the run ended
        self.errors = 0
        self.statuses: dict[str, int] = {}
        self.first_byte: list[float] = []
        self.bytes = 0


async def _stream(port: int, request: bytes, deadline: float, timeout: float, tally: StreamTally) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            if status != 200:
                tally.statuses[str(status)] = tally.statuses.get(str(status), 0) + 1
                tally.errors += 1
                return
            chunk = await reader.read(65536)
            if not chunk:
                tally.errors += 1
                return
        tally.first_byte.append(loop.time() - t0)
        tally.opened += 1
        tally.bytes += len(chunk)
        while loop.time() < deadline:
            try:
                async with asyncio.timeout(max(0.001, deadline - loop.time())):
                    chunk = await reader.read(65536)
            except TimeoutError:
                break  # nothing new (the job is queued): the stream is idle and open, as it should be
            if not chunk:
                tally.errors += 1  # the server ended a stream of a job that has not ended
                return
            tally.bytes += len(chunk)
        tally.held += 1
    except TimeoutError:
        tally.errors += 1
        tally.statuses["timeout"] = tally.statuses.get("timeout", 0) + 1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        tally.errors += 1
    finally:
        if writer is not None:
            writer.close()


async def _generate(cfg: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    port, seconds, warmup, timeout = cfg["port"], cfg["seconds"], cfg["warmup"], cfg["timeout"]
    start = loop.time() + warmup
    deadline = start + seconds
    poll = _request(cfg["path"], cfg["key"])
    tally = Tally()
    tasks = [_poller(port, poll, start, deadline, timeout, tally) for _ in range(cfg["pollers"])]
    streams = StreamTally()
    if cfg.get("streams"):
        sse = _request(cfg["stream_path"], cfg["key"], accept="text/event-stream")
        tasks += [_stream(port, sse, deadline, timeout, streams) for _ in range(cfg["streams"])]
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*tasks)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    out = {**tally.summary(seconds), "generator_cpu_s": round(cpu, 2),
           "generator_cores": round(cpu / wall, 2)}
    if cfg.get("streams"):
        fb = sorted(streams.first_byte)
        out["streams"] = {"asked": cfg["streams"], "opened": streams.opened, "held": streams.held,
                          "errors": streams.errors, "statuses": streams.statuses, "bytes": streams.bytes,
                          "first_byte_p50_ms": round(fb[len(fb) // 2] * 1000, 1) if fb else None,
                          "first_byte_p99_ms": round(fb[min(len(fb) - 1, int(0.99 * len(fb)))] * 1000, 1)
                          if fb else None}
    return out


def generator_main(cfg_json: str) -> None:
    import resource

    cfg = json.loads(cfg_json)
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    try:
        import uvloop

        result = uvloop.run(_generate(cfg))
    except ImportError:
        result = asyncio.run(_generate(cfg))
    print(json.dumps(result))


def run_load(port: int, key: str, path: str, pollers: int, seconds: float, timeout: float,
             streams: int = 0, stream_path: str = "", server_pid: int | None = None,
             pg_sampler: PgSampler | None = None) -> dict[str, Any]:
    cfg = {"port": port, "key": key, "path": path, "pollers": pollers, "seconds": seconds, "warmup": 1.0,
           "timeout": timeout, "streams": streams, "stream_path": stream_path}
    load0 = os.getloadavg()[0]
    cpu0 = _proc_cpu(server_pid)
    if pg_sampler:
        pg_sampler.reset()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--generate", json.dumps(cfg)], capture_output=True,
                          text=True, timeout=seconds + timeout + 60)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if server_pid:
        out["server_cores"] = round((_proc_cpu(server_pid) - cpu0) / wall, 2)
    out["load_avg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    if pg_sampler:
        out["pg_idle_in_transaction_max"] = pg_sampler.max_idle_in_tx
        out["pg_connections_max"] = pg_sampler.max_conns
    return out


def _proc_cpu(pid: int | None) -> float:
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ servers


def bare_app_main(payload_path: str, port: int) -> None:
    """The baseline: FastAPI answering the same JSON from memory, with the real server's uvicorn options."""
    from fastapi import FastAPI

    from layerprune.api.server import serve
    from layerprune.settings import Settings

    payloads = json.loads(Path(payload_path).read_text())
    job, jobs = payloads["job"], payloads["jobs"]
    app = FastAPI()

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        return job

    @app.get("/v1/jobs")
    async def list_jobs(limit: int = 20) -> dict[str, Any]:
        return jobs

    # The same as a plain ``def`` (run on a worker thread, as the API's routes are): what FastAPI's
    # sync-route machinery alone costs, for perspective.
    @app.get("/sync/v1/jobs/{job_id}")
    def get_job_sync(job_id: str) -> dict[str, Any]:
        return job

    serve(app, "127.0.0.1", port, Settings(), log_level="warning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not start: {log.read_text()[-3000:]}")


def _start(cmd: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    _wait_ready(port, proc, log)
    return proc


class PgSampler(threading.Thread):
    """Counts the bench database's connections (and those idle in a transaction) while a load runs."""

    def __init__(self, dbname: str) -> None:
        super().__init__(daemon=True)
        self.dbname = dbname
        self.stop_event = threading.Event()
        self.reset()

    def reset(self) -> None:
        self.max_idle_in_tx = 0
        self.max_conns = 0

    def run(self) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            while not self.stop_event.wait(0.2):
                row = conn.execute("SELECT count(*), count(*) FILTER (WHERE state = 'idle in transaction') "
                                   "FROM pg_stat_activity WHERE datname = %s", (self.dbname,)).fetchone()
                self.max_conns = max(self.max_conns, row[0])
                self.max_idle_in_tx = max(self.max_idle_in_tx, row[1])


def _http_json(method: str, port: int, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    import httpx

    r = httpx.request(method, f"http://127.0.0.1:{port}{path}", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}"})
    return r.status_code, r.json()


def bench_backend(backend: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    key = "lp_bench_" + secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERPRUNE_")}
    env.update({"LAYERPRUNE_DATA_DIR": str(tmp / backend), "LAYERPRUNE_API_KEYS": f"bench:{key}",
                "LAYERPRUNE_CUDA_WORKERS": "false", "PYTHONPATH": str(REPO)})
    for name, value in os.environ.items():  # settings under test (LAYERPRUNE_API_THREADS=…) pass through
        if name.startswith("LAYERPRUNE_") and name not in ("LAYERPRUNE_DATABASE_URL", "LAYERPRUNE_DATA_DIR",
                                                           "LAYERPRUNE_API_KEYS", "LAYERPRUNE_BROKER_URL"):
            env[name] = value
    dbname = None
    sampler = None
    if backend == "postgres":
        import psycopg

        dbname = f"lp_bench_{secrets.token_hex(6)}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        env["LAYERPRUNE_DATABASE_URL"] = f"{base}/{dbname}"
        # A server database needs the API-key secret (db/keys.py); a throwaway one for a throwaway database.
        env.setdefault("LAYERPRUNE_KEY_SECRET", secrets.token_hex(32))
        sampler = PgSampler(dbname)
    result: dict[str, Any] = {}
    api = bare = None
    try:
        port = _free_port()
        log = tmp / f"api-{backend}.log"
        api = _start([sys.executable, "-m", "layerprune.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                     env, port, log)
        job_ids = []
        for i in range(args.jobs):
            status, body = _http_json("POST", port, "/v1/jobs", key, {**SPEC, "metadata": {"pipeline": "bench",
                                                                                           "n": str(i)}})
            if status != 201:
                raise RuntimeError(f"POST /v1/jobs answered {status}: {body}")
            job_ids.append(body["id"])
        job_path = f"/v1/jobs/{job_ids[0]}"
        list_path = "/v1/jobs?limit=50"
        payloads = {"job": _http_json("GET", port, job_path, key)[1], "jobs": _http_json("GET", port, list_path, key)[1]}
        (tmp / "payloads.json").write_text(json.dumps(payloads))
        result["json_bytes"] = {"get": len(json.dumps(payloads["job"])), "list": len(json.dumps(payloads["jobs"]))}
        if sampler:
            sampler.start()
        loads = {"get": (job_path, args.pollers, 0), "list": (list_path, args.pollers, 0),
                 "stream": (job_path, 20, args.streams)}
        for name in args.loads:
            path, pollers, streams = loads[name]
            result[name] = run_load(port, key, path, pollers, args.seconds, args.timeout, streams=streams,
                                    stream_path=f"{job_path}/events", server_pid=api.pid, pg_sampler=sampler)
        stop_group(api)
        api = None

        port = _free_port()
        bare = _start([sys.executable, __file__, "--serve-bare", str(tmp / "payloads.json"), "--port", str(port)],
                      env, port, tmp / "bare.log")
        for name in [n for n in args.loads if n != "stream"]:
            path, pollers, _ = loads[name]
            base = run_load(port, key, path, pollers, args.seconds, args.timeout, server_pid=bare.pid)
            result[f"{name}_bare"] = base
            result[f"{name}_ratio"] = _ratios(result[name], base)
        if "get" in args.loads and args.sync_baseline:
            base = run_load(port, key, "/sync" + job_path, args.pollers, args.seconds, args.timeout,
                            server_pid=bare.pid)
            result["get_bare_sync"] = base
            result["get_ratio_to_sync"] = _ratios(result["get"], base)
    finally:
        for proc in (api, bare):
            if proc is not None:
                stop_group(proc)
        if sampler:
            sampler.stop_event.set()
            sampler.join(5)
        if dbname:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return result


def _ratios(real: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    return {"rps": round(real["rps"] / base["rps"], 3) if base["rps"] else None,
            "p99": round(real["p99_ms"] / base["p99_ms"], 2) if real["p99_ms"] and base["p99_ms"] else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--pollers", type=int, default=200, help="concurrent pollers of each GET load")
    parser.add_argument("--streams", type=int, default=200, help="concurrent SSE streams")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each load (after a 1 s warm-up)")
    parser.add_argument("--timeout", type=float, default=10.0, help="a request unanswered this long is a timeout")
    parser.add_argument("--jobs", type=int, default=50, help="jobs created before the loads (the list shows 50)")
    parser.add_argument("--loads", nargs="+", default=["get", "list", "stream"], choices=["get", "list", "stream"])
    parser.add_argument("--no-sync-baseline", dest="sync_baseline", action="store_false",
                        help="skip the extra baseline of a bare sync (def) route")
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generator_main(args.generate)
        return
    if args.serve_bare:
        bare_app_main(args.serve_bare, args.port)
        return
    if not (1 <= args.pollers <= MAX_CONNECTIONS and 0 <= args.streams <= MAX_CONNECTIONS):
        parser.error(f"--pollers and --streams must be within 1..{MAX_CONNECTIONS}")
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds must be within 1..600")
    backends = ["postgres", "sqlite"] if args.backend == "both" else [args.backend]
    out: dict[str, Any] = {"pollers": args.pollers, "streams": args.streams, "seconds": args.seconds,
                           "cpus": os.cpu_count(), "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="lp-bench-api-") as tmp:
        for backend in backends:
            out[backend] = bench_backend(backend, args, Path(tmp))
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
