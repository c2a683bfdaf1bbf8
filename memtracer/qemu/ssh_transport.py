"""--ssh_key: the workload (a file, or a whole directory) goes to the
guest with SFTP, over a port of QEMU's user network forwarded to the guest's SSH server.

Key-based only: paramiko is never given a password, nor the user's agent or ~/.ssh keys, and the
guest's host key is kept in memory for the run (never written to the user's known_hosts). The
forward is added at run time (`hostfwd_add`), so the snapshot's command line stays the same, and
it listens on 127.0.0.1 only, on a port free at the time.
"""
import logging
import os
import posixpath
import socket
import stat
import time

import paramiko

from ..errors import BadInputError, QemuError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 30
FORWARD_ATTEMPTS = 5


def load_private_key(path):
    """The private key at path; a clear one-line error for anything else."""
    try:
        return paramiko.PKey.from_path(path)
    except (paramiko.PasswordRequiredException, TypeError):   # TypeError: cryptography's word for the same
        raise BadInputError(f"ssh_key must be an unencrypted private key file, but {path} is encrypted "
                            "(memory_tracer never asks for a passphrase).") from None
    except (paramiko.SSHException, OSError, ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"ssh_key must be a private key file (Ed25519, ECDSA or RSA), but {path} "
                            f"isn't ({exc}).") from None


def _free_local_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SshTransport:
    def __init__(self, machine, key_path, user="root", guest_port=22):
        self.machine = machine
        self.key = load_private_key(key_path)
        self.key_path = key_path
        self.user = user
        self.guest_port = guest_port
        self.client = None
        self.sftp = None

    def connect(self, timeout=CONNECT_TIMEOUT_SECONDS):
        host_port = self._forward_port()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())   # in memory, for this run only
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.connect("127.0.0.1", host_port, username=self.user, pkey=self.key, timeout=5,
                               banner_timeout=10, auth_timeout=10, allow_agent=False, look_for_keys=False)
                break
            except paramiko.AuthenticationException:
                client.close()
                raise BadInputError(f"ssh_key must be a key the guest accepts for {self.user}, but "
                                    f"{self.key_path} isn't (authentication failed).") from None
            except (paramiko.SSHException, OSError) as exc:
                if time.monotonic() > deadline or not self.machine.is_alive():
                    client.close()
                    raise QemuError(f"cannot reach the guest's SSH server (guest port {self.guest_port}, "
                                    f"forwarded from 127.0.0.1:{host_port}) within {timeout:g} s: {exc}; "
                                    "does the image run one?") from None
                time.sleep(0.2)
        self.client = client
        try:
            self.sftp = client.open_sftp()
        except (paramiko.SSHException, OSError) as exc:
            self.close()
            raise QemuError(f"the guest's SSH server has no working SFTP subsystem ({exc}).") from None
        log.debug("SSH: connected to the guest as %s through 127.0.0.1:%d", self.user, host_port)
        return self

    def _forward_port(self):
        for _ in range(FORWARD_ATTEMPTS):
            port = _free_local_port()
            answer = self.machine.human_command(f"hostfwd_add tcp:127.0.0.1:{port}-:{self.guest_port}").strip()
            if not answer:
                return port
            log.debug("hostfwd_add on port %d: %s", port, answer)
        raise QemuError(f"QEMU could not forward a local port to the guest's port {self.guest_port}: {answer} "
                        "(does the image's snapshot have a user-mode network card?)")

    def home(self):
        return self.sftp.normalize(".")

    def send(self, local_path, remote_name):
        """Copy a file or a directory tree into the guest user's home as remote_name; its guest path."""
        remote = posixpath.join(self.home(), remote_name)
        self._remove(remote)
        if os.path.isdir(local_path):
            self._send_tree(local_path, remote)
        else:
            self._send_file(local_path, remote)
        return remote

    def _send_file(self, local, remote):
        self.sftp.put(local, remote)
        self.sftp.chmod(remote, stat.S_IMODE(os.stat(local).st_mode))

    def _send_tree(self, local_dir, remote_dir):
        self.sftp.mkdir(remote_dir)
        for entry in sorted(os.scandir(local_dir), key=lambda e: e.name):
            target = posixpath.join(remote_dir, entry.name)
            if entry.is_dir(follow_symlinks=True):
                self._send_tree(entry.path, target)
            else:
                self._send_file(entry.path, target)

    def _remove(self, remote):
        """Whatever the snapshot already holds at remote (an image of your own may)."""
        try:
            mode = self.sftp.stat(remote).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            for name in self.sftp.listdir(remote):
                self._remove(posixpath.join(remote, name))
            self.sftp.rmdir(remote)
        else:
            self.sftp.remove(remote)

    def close(self):
        if self.sftp is not None:
            self.sftp.close()
            self.sftp = None
        if self.client is not None:
            self.client.close()
            self.client = None
