"""A real Spark *standalone* cluster on loopback, for tests: one master and N workers.

The pip ``pyspark`` package ships ``bin/spark-class`` (but not ``sbin/start-master.sh``), so the
daemons are started directly::

    spark-class org.apache.spark.deploy.master.Master --host 127.0.0.1 --port P --webui-port W
    spark-class org.apache.spark.deploy.worker.Worker spark://127.0.0.1:P --cores 1 --memory 2g ...

Every daemon (and ``spark-submit``) runs in its OWN process group (``start_new_session``), so
stopping sends SIGTERM/SIGKILL to the whole group: the Worker's executor JVMs and their Python
workers are in the worker's group and cannot be orphaned. Everything binds to 127.0.0.1.

    with StandaloneCluster(workers=2, work_root=tmp_path) as cluster:
        res = cluster.submit(["jobs/run_pipeline.py", "--input", ...],
                             conf={"spark.executor.memory": "1g"})
        assert res.returncode == 0, res.tail()
        apps = cluster.master_state()["completedapps"]

Used by tests/test_cluster_standalone.py; nothing here imports pytest.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

LOOPBACK = "127.0.0.1"


class ClusterError(RuntimeError):
    """The cluster did not come up, or a daemon died; the message carries the log tails."""


# ------------------------------------------------------------------------------------------
# Discovery helpers


def spark_home() -> Path:
    """SPARK_HOME of the pyspark in this interpreter (the pip package is a Spark distribution)."""
    env = os.environ.get("SPARK_HOME")
    if env and (Path(env) / "bin" / "spark-class").exists():
        return Path(env)
    import pyspark  # noqa: PLC0415 - only needed here

    return Path(pyspark.__file__).resolve().parent


def java_available() -> str | None:
    """Why Java can't run Spark here (a reason string), or None when it can."""
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        return "no Java runtime (java not on PATH and JAVA_HOME unset); Spark needs Java 17+"
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:  # pragma: no cover - broken installs
        return f"java -version failed: {e}"
    if out.returncode != 0:
        return f"java -version exited {out.returncode}: {out.stderr.strip()[:200]}"
    return None


def free_port() -> int:
    """A TCP port free on loopback right now (the daemon binds it moments later; a clash is
    reported by the daemon failing to start, which start() turns into a retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _http_json(url: str, timeout: float = 5.0) -> dict:
    # No proxies: a corporate HTTP(S)_PROXY in the environment must not see loopback requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as r:
        return json.loads(r.read().decode("utf-8"))


def _tail(path: Path, n: int = 60) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"<no log at {path}>"
    return "\n".join(lines[-n:])


def build_pyfiles_zip(package_dir: str | Path, dest: str | Path) -> Path:
    """Zip a Python package (``clinicalbert_spark/``) for ``--py-files``, the way a cluster job
    ships code to executors that don't have it installed. Skips caches and compiled files."""
    package_dir = Path(package_dir).resolve()
    dest = Path(dest)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(package_dir.rglob("*")):
            if p.is_dir() or "__pycache__" in p.parts or p.suffix in {".pyc", ".pyo"}:
                continue
            zf.write(p, p.relative_to(package_dir.parent).as_posix())
    return dest


# ------------------------------------------------------------------------------------------
# Processes


@dataclass
class Daemon:
    """One spark-class process (a session/process-group leader) and its log file."""

    name: str
    argv: list[str]
    log: Path
    ui_port: int
    proc: subprocess.Popen | None = None

    def start(self, env: Mapping[str, str], cwd: Path) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(
                self.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(env), cwd=str(cwd), start_new_session=True,
            )
        finally:
            fh.close()  # the child holds its own descriptor

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's group, can't be ours
        return True
    return True


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, starttime) of a live process from /proc, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, starttime) of every live descendant of ``pid`` (Linux /proc; [] elsewhere).

    Needed because process-group kills are not enough for Spark: pyspark's ``daemon.py`` (the
    executors' Python worker forker) calls ``os.setpgid(0, 0)`` and so leaves the group of the
    worker JVM that started it."""
    if not Path("/proc/self/stat").exists():  # pragma: no cover - not Linux
        return []
    children: dict[int, list[int]] = {}
    start: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _proc_stat(int(d.name))
            if st:
                children.setdefault(st[0], []).append(int(d.name))
                start[int(d.name)] = st[1]
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append((c, start[c]))
            todo.append(c)
    return out


def _same_process_alive(pid: int, starttime: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[1] == starttime  # a recycled pid has another start time


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> list[str]:
    """SIGTERM the process group led by ``proc`` and every descendant that left the group, wait,
    then SIGKILL what is left. Returns problems seen (empty when everything was gone within the
    grace period)."""
    problems: list[str] = []
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    strays = [(p, t) for p, t in descendants(proc.pid) if _pgid(p) != pgid]
    if not group_alive(pgid) and not strays:
        proc.poll()
        return problems

    def alive() -> bool:
        proc.poll()  # reap the leader so the group can empty
        return group_alive(pgid) or any(_same_process_alive(p, t) for p, t in strays)

    def signal_all(sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        for p, t in strays:
            if _same_process_alive(p, t):
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass

    # The group first: a Worker's shutdown hook stops its executors, whose Python daemons exit
    # when their stdin closes; only then the strays, if any are still there.
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_alive(pgid):
        proc.poll()
        time.sleep(0.2)
    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive():
        time.sleep(0.2)
    if not alive():
        return problems
    problems.append(f"process group {pgid} (+{len(strays)} strays) still alive after SIGTERM; "
                    "SIGKILL")
    signal_all(signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        problems.append(f"pid {proc.pid} survived SIGKILL")
    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():  # pragma: no cover
        problems.append(f"process group {pgid} survived SIGKILL")
    return problems


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@dataclass
class SubmitResult:
    returncode: int
    argv: list[str]
    log: Path
    seconds: float
    timed_out: bool = False

    def tail(self, n: int = 80) -> str:
        return f"$ {' '.join(self.argv)}\n(exit {self.returncode}, {self.seconds:.1f}s)\n" + _tail(
            self.log, n
        )


# ------------------------------------------------------------------------------------------
# The cluster


@dataclass
class StandaloneCluster:
    """A standalone master + ``workers`` workers on 127.0.0.1 under ``work_root``."""

    work_root: Path
    workers: int = 2
    worker_cores: int = 1
    worker_memory: str = "2g"
    # Heap of each master/worker daemon JVM. They only do bookkeeping; Spark's default of 1g
    # each would be 3 GB of mostly empty heap on a small CI machine.
    daemon_memory: str = "512m"
    start_timeout: float = 120.0
    python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work_root = Path(self.work_root)
        self.home = spark_home()
        self.spark_class = str(self.home / "bin" / "spark-class")
        self.spark_submit = str(self.home / "bin" / "spark-submit")
        self.master_port = 0
        self.master_ui_port = 0
        self.daemons: list[Daemon] = []
        self.problems: list[str] = []

    # -- environment -------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Keep this cluster independent of whatever Spark the developer has configured.
        for k in ("SPARK_CONF_DIR", "MASTER", "SPARK_MASTER_HOST", "PYSPARK_DRIVER_PYTHON"):
            env.pop(k, None)
        conf_dir = self.work_root / "conf"
        conf_dir.mkdir(parents=True, exist_ok=True)
        env.update(
            SPARK_HOME=str(self.home),
            SPARK_CONF_DIR=str(conf_dir),  # empty: no stray spark-defaults.conf
            SPARK_LOCAL_IP=LOOPBACK,
            SPARK_LOCAL_HOSTNAME="localhost",
            SPARK_DAEMON_MEMORY=self.daemon_memory,
            SPARK_LOG_DIR=str(self.work_root / "logs"),
            SPARK_WORKER_DIR=str(self.work_root / "work"),
            # Executors run Python UDFs with this interpreter (same venv as the driver).
            PYSPARK_PYTHON=self.python,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    @property
    def master_url(self) -> str:
        return f"spark://{LOOPBACK}:{self.master_port}"

    @property
    def master_ui(self) -> str:
        return f"http://{LOOPBACK}:{self.master_ui_port}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "StandaloneCluster":
        last: Exception | None = None
        for attempt in range(3):  # a free port can be taken between probing and binding
            try:
                self._start_once(attempt)
                return self
            except ClusterError as e:
                last = e
                self.stop()
        raise ClusterError(f"standalone cluster did not start after 3 attempts:\n{last}")

    def _start_once(self, attempt: int) -> None:
        self.daemons = []
        self.problems = []
        env = self.env()
        logs = self.work_root / "logs"
        self.master_port, self.master_ui_port = free_port(), free_port()
        master = Daemon(
            "master",
            [self.spark_class, "org.apache.spark.deploy.master.Master", "--host", LOOPBACK,
             "--port", str(self.master_port), "--webui-port", str(self.master_ui_port)],
            logs / f"master.{attempt}.log", self.master_ui_port,
        )
        master.start(env, self.work_root)
        self.daemons.append(master)
        self._wait(lambda: self._try_state() is not None, "master web UI to answer")
        for i in range(self.workers):
            wdir = self.work_root / "work" / f"worker{i}"
            wdir.mkdir(parents=True, exist_ok=True)
            ui = free_port()
            w = Daemon(
                f"worker{i}",
                [self.spark_class, "org.apache.spark.deploy.worker.Worker", self.master_url,
                 "--host", LOOPBACK, "--port", str(free_port()), "--webui-port", str(ui),
                 "--cores", str(self.worker_cores), "--memory", self.worker_memory,
                 "--work-dir", str(wdir)],
                logs / f"worker{i}.{attempt}.log", ui,
            )
            w.start(env, self.work_root)
            self.daemons.append(w)
        self._wait(lambda: len(self.alive_workers()) >= self.workers,
                   f"{self.workers} ALIVE workers in {self.master_ui}/json/")

    def _wait(self, ok, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            dead = [d for d in self.daemons if not d.alive]
            if dead:
                raise ClusterError(
                    f"{dead[0].name} exited ({dead[0].proc.returncode}) while waiting for {what}:\n"
                    + _tail(dead[0].log)
                )
            if ok():
                return
            time.sleep(0.5)
        raise ClusterError(f"timed out after {self.start_timeout:.0f}s waiting for {what}:\n"
                           + "\n".join(f"--- {d.name}\n{_tail(d.log, 25)}" for d in self.daemons))

    def stop(self) -> list[str]:
        """Stop workers (and with them their executors) first, then the master. Returns the
        problems seen (process groups that needed SIGKILL); also kept in ``self.problems``."""
        problems: list[str] = []
        # Snapshot the whole tree first (executor JVMs, Python daemons that left the group).
        self._tree = [pt for d in self.daemons if d.proc is not None for pt in descendants(d.proc.pid)]
        for d in reversed(self.daemons):
            if d.proc is not None:
                problems += [f"{d.name}: {p}" for p in stop_group(d.proc)]
        self.problems += problems
        return problems

    def leftovers(self) -> list[str]:
        """Anything this cluster started that is still running (should be [] after stop())."""
        out = [f"group {d.proc.pid} ({d.name})" for d in self.daemons
               if d.proc is not None and group_alive(d.proc.pid)]
        out += [f"pid {p}" for p, t in getattr(self, "_tree", []) if _same_process_alive(p, t)]
        return out

    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state ------------------------------------------------------------------------------
    def _try_state(self) -> dict | None:
        try:
            return _http_json(f"{self.master_ui}/json/")
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def master_state(self) -> dict:
        """The master's JSON status: workers, activeapps, completedapps, ..."""
        return _http_json(f"{self.master_ui}/json/")

    def alive_workers(self) -> list[dict]:
        state = self._try_state() or {}
        return [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]

    def worker_states(self) -> list[dict]:
        """Each worker's own JSON (executors / finishedexecutors with their appid)."""
        return [_http_json(f"http://{LOOPBACK}:{d.ui_port}/json/")
                for d in self.daemons if d.name.startswith("worker")]

    def executor_logs(self, app_id: str) -> list[Path]:
        """stderr files of this app's executors in the workers' work dirs."""
        return sorted((self.work_root / "work").glob(f"worker*/{app_id}/*/stderr"))

    # -- submitting ---------------------------------------------------------------------------
    def submit(
        self,
        app_args: Sequence[str],
        *,
        conf: Mapping[str, str] | None = None,
        py_files: Iterable[str | Path] = (),
        properties_file: str | Path | None = None,
        timeout: float = 300.0,
        cwd: str | Path | None = None,
        log_name: str = "submit",
        env: Mapping[str, str] | None = None,
    ) -> SubmitResult:
        """``spark-submit --master spark://127.0.0.1:P`` in client mode, in its own process
        group (killed whole on timeout). ``app_args`` = the application file and its args."""
        full_conf = {
            "spark.driver.host": LOOPBACK,
            "spark.driver.bindAddress": LOOPBACK,
            "spark.pyspark.python": self.python,
            "spark.pyspark.driver.python": self.python,
            # No driver UI: parallel test runs would race for port 4040.
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
        }
        full_conf.update(conf or {})
        argv = [self.spark_submit, "--master", self.master_url, "--deploy-mode", "client"]
        if properties_file:
            argv += ["--properties-file", str(properties_file)]
        for k, v in full_conf.items():
            argv += ["--conf", f"{k}={v}"]
        files = [str(p) for p in py_files]
        if files:
            argv += ["--py-files", ",".join(files)]
        argv += [str(a) for a in app_args]
        log = self.work_root / "logs" / f"{log_name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        run_env = self.env()
        run_env.update(env or {})
        t0 = time.monotonic()
        with open(log, "wb") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=run_env,
                                    cwd=str(cwd) if cwd else None, start_new_session=True)
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                self.problems += stop_group(proc, grace=5)
                rc = proc.returncode if proc.returncode is not None else -9
            # A finished spark-submit leaves nothing behind; if it did, don't leak it.
            if group_alive(proc.pid):
                self.problems += stop_group(proc, grace=5)
        return SubmitResult(rc, argv, log, time.monotonic() - t0, timed_out)


def app_by_name(state: dict, name: str, *, key: str = "completedapps") -> dict | None:
    """The most recent app called ``name`` in the master state's ``key`` list."""
    apps = [a for a in state.get(key, []) if a.get("name") == name]
    return max(apps, key=lambda a: a.get("starttime", 0)) if apps else None


if __name__ == "__main__":  # manual use: python tests/sparkcluster.py /tmp/cluster
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cbs-standalone")
    with StandaloneCluster(root) as c:
        print("master", c.master_url, "ui", c.master_ui, "- Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
