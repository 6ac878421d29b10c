#!/usr/bin/env python3
"""Run a container image's own command without a container runtime.

On machines where podman can build but not run containers (crun refuses the host's
cgroups), this is the closest faithful stand-in for `podman run IMAGE`: it creates a
container from the image (writable layer, image untouched), mounts its root filesystem and
executes the image's ENTRYPOINT + CMD chroot-ed into it, as the image's USER, with the
image's ENV and WORKDIR. /proc, /dev, /sys and /dev/shm are mounted inside a private mount
namespace (unshare), so they disappear with the process even if this script is killed.
Networking is the host's: the service is reachable on 127.0.0.1 at the port it binds.

    sudo scripts/run_image_chroot.py localhost/churn-api:latest --env PORT=8123
    sudo scripts/run_image_chroot.py localhost/churn-mlflow:latest -- mlflow --version

Needs root, podman and util-linux (unshare, mount). SIGTERM/SIGINT stop the service and
remove the temporary container.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

STOP_TIMEOUT_S = 20.0


class ImageRunError(RuntimeError):
    """The image cannot be run this way (missing tool, bad USER, podman failure)."""


@dataclass
class ImageSpec:
    """What `podman run` would take from the image config."""

    user: str
    env: dict[str, str]
    workdir: str
    entrypoint: list[str]
    cmd: list[str]
    ports: list[str] = field(default_factory=list)

    def argv(self, command: list[str] | None = None) -> list[str]:
        """ENTRYPOINT + CMD, or ENTRYPOINT + `command` (what `podman run IMAGE cmd` does)."""
        return self.entrypoint + (self.cmd if command is None else command)


def podman(*args: str) -> str:
    """Run a podman subcommand and return its stdout, or raise with podman's message."""
    result = subprocess.run(["podman", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageRunError(f"podman {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def inspect_image(image: str) -> ImageSpec:
    """Read USER, ENV, WORKDIR, ENTRYPOINT and CMD of an image from podman."""
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", image))
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    spec = ImageSpec(
        user=config.get("User") or "0",
        env=env,
        workdir=config.get("WorkingDir") or "/",
        entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []),
        ports=sorted(config.get("ExposedPorts") or {}),
    )
    if not spec.argv():
        raise ImageRunError(f"{image} has neither ENTRYPOINT nor CMD; nothing to run")
    return spec


def _lookup(table: Path, name: str, what: str) -> tuple[int, list[str]]:
    """Find `name` (or a numeric id) in an /etc/passwd- or /etc/group-style file."""
    for line in table.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 3 and name in (fields[0], fields[2]):
            return int(fields[2]), fields
    if name.isdigit():
        return int(name), []
    raise ImageRunError(f"image USER names {what} '{name}', which is not in {table}")


def resolve_user(root: Path, user: str) -> tuple[int, int, str]:
    """Turn an image USER ('10001:10001', 'app', 'app:app') into (uid, gid, home)."""
    name, _, group = user.partition(":")
    uid, passwd = _lookup(root / "etc/passwd", name, "user")
    gid = int(passwd[3]) if passwd else uid
    if group:
        gid, _ = _lookup(root / "etc/group", group, "group")
    home = passwd[5] if passwd else "/"
    return uid, gid, home


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def exec_in_root(
    root: str, uid: int, gid: int, workdir: str, argv: list[str], env: dict[str, str]
) -> None:
    """Inside the private mount namespace: mount pseudo-filesystems, chroot, drop root, exec."""
    for sub in ("proc", "dev", "sys"):
        Path(root, sub).mkdir(exist_ok=True)
    _mount("-t", "proc", "proc", f"{root}/proc")
    _mount("--rbind", "/dev", f"{root}/dev")
    _mount("--rbind", "/sys", f"{root}/sys")
    _mount("-o", "remount,bind,ro", f"{root}/sys")
    shm = Path(root, "dev/shm")
    shm.mkdir(exist_ok=True)
    _mount("-t", "tmpfs", "-o", "mode=1777,size=64m", "shm", str(shm))
    os.chroot(root)
    os.chdir(workdir)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    os.execvpe(argv[0], argv, env)  # noqa: S606 (argv is the image's own command)


@dataclass
class RunningImage:
    """A started image command plus what must be undone when it stops."""

    container: str
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the service (its whole process group), then remove the container."""
        try:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
        finally:
            podman("umount", self.container)
            podman("rm", "--force", self.container)
        return int(self.process.returncode)


def start(
    image: str, env_overrides: dict[str, str], command: list[str] | None = None
) -> RunningImage:
    """Start `image`'s command (or `command`) chroot-ed into a fresh container filesystem."""
    if os.geteuid() != 0:
        raise ImageRunError("chroot and mount need root; run with sudo")
    spec = inspect_image(image)
    container = podman("create", image)
    try:
        root = Path(podman("mount", container))
        uid, gid, home = resolve_user(root, spec.user)
        env = {"HOME": home, "HOSTNAME": container[:12], **spec.env, **env_overrides}
        payload = json.dumps(
            {
                "root": str(root),
                "uid": uid,
                "gid": gid,
                "workdir": spec.workdir,
                "argv": spec.argv(command),
                "env": env,
            }
        )
        # The host interpreter runs this file again inside the namespace; the image's ENV
        # is applied only at the final exec so it cannot disturb the host Python.
        process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                sys.executable,
                "-I",
                os.path.abspath(__file__),
                "--exec-in",
                payload,
            ],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            start_new_session=True,
        )
    except BaseException:
        subprocess.run(["podman", "umount", container], capture_output=True, check=False)
        subprocess.run(["podman", "rm", "--force", container], capture_output=True, check=False)
        raise
    return RunningImage(container=container, process=process)


def _parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", nargs="?", help="image reference, e.g. localhost/churn-api")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE override")
    parser.add_argument("--pidfile", type=Path, help="write the service's pid here")
    parser.add_argument("--exec-in", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] | None = None
    if "--" in argv:  # everything after `--` replaces the image's CMD
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :] or None
    args = parser.parse_args(argv)
    if args.exec_in:
        spec = json.loads(args.exec_in)
        exec_in_root(
            spec["root"], spec["uid"], spec["gid"], spec["workdir"], spec["argv"], spec["env"]
        )
        return 127  # unreachable: exec replaced the process
    if not args.image:
        parser.error("IMAGE is required")
    running = start(args.image, _parse_env(args.env), command)
    if args.pidfile:
        tmp = args.pidfile.with_suffix(".tmp")
        tmp.write_text(f"{running.process.pid}\n")
        tmp.replace(args.pidfile)  # atomic: a reader never sees a partial pid

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    with contextlib.suppress(KeyboardInterrupt):
        running.process.wait()
    return running.stop()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ImageRunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
