"""Getting the workload into the guest: a path already there, a program sent over the runner's
channel (gzip'd on the slow serial port), or, with --ssh_key, files and program sent with SFTP."""
import logging
import time

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 30
SERIAL_BYTES_PER_SECOND = 20_000   # pessimistic, for the transfer's timeout only


def place_workload(target, channel, machine, progress):
    """The workload's path in the guest, once it is there."""
    if target.ssh_key is not None:
        return place_with_sftp(target, machine, progress)
    if target.workload_path_on_guest is not None:
        return target.workload_path_on_guest
    with open(target.workload_path_on_host, "rb") as f:
        data = f.read()
    progress.phase(f"sending the workload ({len(data) / 1000:.0f} KB) over the {channel.name}")
    started = time.monotonic()

    def show(sent, total):
        progress.update(f"sending the workload over the {channel.name}: "
                        f"{100 * sent // max(total, 1)}% of {total / 1000:.0f} KB")
    timeout = REQUEST_TIMEOUT_SECONDS + len(data) / SERIAL_BYTES_PER_SECOND
    path = channel.send_workload(data, compress=channel.name == "serial port", timeout=timeout, progress=show)
    log.debug("sent %d bytes over the %s in %.3f s", len(data), channel.name, time.monotonic() - started)
    return path


def place_with_sftp(target, machine, progress):
    from ..qemu.ssh_transport import SshTransport   # here: importing paramiko costs every run ~0.1 s
    progress.phase("connecting to the guest's SSH server")
    ssh = SshTransport(machine, target.ssh_key, target.ssh_user).connect()
    try:
        if target.workload_files is not None:
            progress.phase("sending the workload files with SFTP")
            placed = ssh.send(target.workload_files, "workload")
            log.debug("workload files: %s -> %s", target.workload_files, placed)
        path = target.workload_path_on_guest
        if target.workload_path_on_host is not None:
            progress.phase("sending the workload with SFTP")
            path = ssh.send(target.workload_path_on_host, "workload_runner")
        log.debug("the workload is %s on the guest", path)
        return path
    finally:
        ssh.close()
