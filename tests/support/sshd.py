"""A second "host" on this machine for the multi-host tests (tests/multihost, docs/multihost.md).

An sshd of its own listens on a loopback alias (127.0.0.2: every 127.x.y.z address works on Linux's `lo`
without configuration) on a free port, with a host key and a user key generated for the test, its own
sshd_config, AuthorizedKeysFile and PidFile, all in one temporary folder: nothing of ~/.ssh or /etc/ssh is
read or written. horovodrun and mpirun reach it over SSH exactly as they reach a cluster node, so rank 1
runs in a process the launcher started through ssh, with the environment the launcher forwards.

The sshd runs in mount and UTS namespaces of its own (`unshare --mount --uts`, so root is needed), which give
the second host what another machine has and Open MPI relies on: its own host name (pfc-second-host, in an
/etc/hosts of its own) and its own /dev/shm. `private=[DIR]` adds an empty tmpfs over each DIR: the second
host then does not see what the first writes there, as on two machines whose folder of that name is not
shared.

Clients reach it without prompts and without touching ~/.ssh/known_hosts through `ssh_config` (the host's
key is already in its own known_hosts file): `bin/ssh`, a wrapper that runs `ssh -F ssh_config`, is what
horovodrun (which runs plain `ssh`) finds first on PATH and what mpirun gets as its plm_rsh_agent.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time

ADDRESS = "127.0.0.2"  # the second host; the first is 127.0.0.1 (localhost)
HOSTNAME = "pfc-second-host"  # its host name, in a UTS namespace of its own
SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and insists on an absolute path


class Unavailable(RuntimeError):
    """The second host cannot be started here (no sshd, no root for a mount namespace, ...)."""


def sshd_path() -> str | None:
    return shutil.which("sshd", path=os.pathsep.join([os.path.dirname(SSHD), os.environ.get("PATH", "")]))


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _keygen(path: str, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    with open(path + ".pub") as f:
        return f.read().strip()


class Host:
    """A running sshd on `address`:`port`; `stop()` ends it by its pid."""

    def __init__(self, folder: str, address: str = ADDRESS, private: tuple = (), timeout: float = 20.0):
        self.folder, self.address, self.private = os.path.abspath(folder), address, tuple(private)
        self.user = getpass.getuser()
        self.hostname = HOSTNAME
        self.proc = None
        sshd = sshd_path()
        if sshd is None:
            raise Unavailable("sshd is not installed (Debian: apt-get install openssh-server; "
                              "scripts/install.sh does it)")
        if os.geteuid() != 0:
            raise Unavailable("the second host's mount namespace (unshare -m, mount -t tmpfs) needs root")
        os.makedirs(self.folder, exist_ok=True)
        f = self.path
        host_pub = _keygen(f("host_key"), "pfc-test-host")
        _keygen(f("user_key"), "pfc-test-user")
        shutil.copy(f("user_key.pub"), f("authorized_keys"))
        os.chmod(f("authorized_keys"), 0o600)
        self.key = f("user_key")
        self.port = _free_port(address)
        with open(f("sshd_config"), "w") as out:
            out.write("\n".join([
                f"ListenAddress {address}", f"Port {self.port}", f"HostKey {f('host_key')}",
                f"PidFile {f('sshd.pid')}", f"AuthorizedKeysFile {f('authorized_keys')}",
                # The keys live under /tmp, which is world-writable: StrictModes would refuse them.
                "StrictModes no", "UsePAM no", "PermitRootLogin prohibit-password", f"AllowUsers {self.user}",
                "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "AuthenticationMethods publickey", "X11Forwarding no", "AllowAgentForwarding no",
                "PrintMotd no", "PrintLastLog no", "UseDNS no", "LogLevel INFO", "MaxStartups 50:30:100", ""]))
        with open(f("known_hosts"), "w") as out:
            out.write(f"[{address}]:{self.port} {host_pub}\n")
        with open(f("ssh_config"), "w") as out:
            out.write("\n".join([
                f"Host {address}", f"  Port {self.port}", f"  User {self.user}", f"  IdentityFile {self.key}",
                "  IdentitiesOnly yes", f"  UserKnownHostsFile {f('known_hosts')}", "  GlobalKnownHostsFile /dev/null",
                "  StrictHostKeyChecking yes", "  BatchMode yes", "  ConnectTimeout 10", "  LogLevel ERROR",
                "  ForwardAgent no", "  ForwardX11 no", "  RequestTTY no", ""]))
        os.makedirs(f("bin"), exist_ok=True)
        self.ssh = f("bin/ssh")
        with open(self.ssh, "w") as out:
            out.write(f"#!/bin/sh\nexec /usr/bin/ssh -F {f('ssh_config')} \"$@\"\n")
        os.chmod(self.ssh, 0o755)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder (as root)
        # Namespaces of its own give it what another machine has and Open MPI relies on: a host name (it
        # tells nodes apart by name: with one name for both, its node-local communicators mix ranks of the two
        # hosts and Horovod's start-up crashes), an /etc/hosts that resolves it, an /dev/shm of its own (Open
        # MPI's shared-memory segments are named by host), and, for `private`, an empty tmpfs over each folder.
        with open("/etc/hosts") as src, open(f("hosts"), "w") as out:
            out.write(src.read().rstrip("\n") + f"\n{address} {self.hostname}\n")
        setup = [f"hostname {self.hostname}", f"mount --bind {_q(f('hosts'))} /etc/hosts"] + [
            f"mount -t tmpfs -o size={size} pfc-private {_q(d)}"
            for d, size in [("/dev/shm", "256m")] + [(d, "16m") for d in self.private]]
        cmd = ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c",
               f"{' && '.join(setup)} && exec {' '.join(map(_q, [sshd, '-D', '-e', '-f', f('sshd_config')]))}"]
        self.log = open(f("sshd.log"), "w")
        # unshare and sh exec, so the child's pid is sshd's.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready(timeout)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise Unavailable(f"sshd exited with status {self.proc.returncode}: {self.read_log()[-2000:]}")
            p = subprocess.run(self.ssh_command("true"), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=30)
            if p.returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise Unavailable(f"sshd on {self.address}:{self.port} did not accept a login within {timeout:.0f} s: "
                          f"{p.stderr.strip()} {self.read_log()[-2000:]}")

    def ssh_command(self, *remote) -> list:
        """`ssh` to this host with the test's key and known_hosts, never prompting."""
        return [self.ssh, "-p", str(self.port), "-i", self.key, self.address, *remote]

    def rsh_agent(self) -> str:
        """Open MPI's plm_rsh_agent: how mpirun starts its orted on this host."""
        return f"{self.ssh} -p {self.port} -i {self.key}"

    def env(self, env: dict) -> dict:
        """`env` with the ssh wrapper first on PATH (horovodrun runs plain `ssh`)."""
        env = dict(env)
        env["PATH"] = os.path.dirname(self.ssh) + os.pathsep + env.get("PATH", "")
        return env

    def logins(self) -> int:
        """How many sessions this sshd has accepted so far (its log's `Accepted publickey` lines)."""
        return self.read_log().count("Accepted publickey for ")

    def read_log(self) -> str:
        try:
            with open(self.path("sshd.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the sshd by its pid (its sessions end with it), SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def _q(s: str) -> str:
    import shlex
    return shlex.quote(str(s))
