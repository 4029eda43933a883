"""Training across two hosts, reached over SSH as on a cluster (the second one is an sshd on 127.0.0.2:
conftest.py, support/sshd.py), with the launch commands of docs/multihost.md:

    horovodrun -np 2 -H localhost:1,127.0.0.2:1 -p PORT --ssh-identity-file KEY --network-interface lo --gloo bash config.sh
    HOSTFILE=hosts NP=4 OMPI_MCA_plm_rsh_agent=... OMPI_MCA_{btl,oob}_tcp_if_include=lo bash run.sh

A few steps, a checkpoint, a resume on the same two hosts: the per-step losses equal those of one host with
the same number of workers, exactly (HOROVOD_FUSION_THRESHOLD=0). And a PFC_OUTPUT the second host does not
share (its sshd in a mount namespace of its own, an empty tmpfs over the folder) is refused before any
training, with one line naming the rank and host that do not see it, under both launchers.
"""
import json
import os
import socket

import pytest

from partial_fc import checkpoint
from support.runs import losses_by_step, run as _run, small_run_env

TOTAL, HALF = 4, 2  # steps of a run; the first two-host run stops at HALF (a checkpoint), the resume goes on
LOOPBACK_MPI = {"OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_oob_tcp_if_include": "lo"}


def _env(output, **extra):
    return small_run_env(output, TOTAL, **{"PFC_CHECKPOINT_STEPS": HALF, **extra})


def _ok(p):
    assert p.returncode == 0, p.stdout[-4000:]
    return p.stdout


def horovodrun(host, per_host):
    """Two hosts with `per_host` workers each, the second reached by ssh on its port with the test's key."""
    return ["horovodrun", "-np", str(2 * per_host), "-H", f"localhost:{per_host},{host.address}:{per_host}",
            "-p", str(host.port), "--ssh-identity-file", host.key, "--network-interface", "lo", "--gloo",
            "--disable-cache", "bash", "config.sh"]


def run_sh_env(host, folder, per_host, output, **extra):
    """run.sh's environment for two hosts: a hostfile, ssh for Open MPI's daemons, Open MPI pinned to lo."""
    hostfile = os.path.join(folder, f"hosts-{per_host}")
    with open(hostfile, "w") as f:
        f.write(f"localhost slots={per_host}\n{host.address} slots={per_host}\n")
    return host.env(_env(output, NP=2 * per_host, HOSTFILE=hostfile, OMPI_MCA_plm_rsh_agent=host.rsh_agent(),
                         **LOOPBACK_MPI, **extra))


def _known_hosts():
    path = os.path.expanduser("~/.ssh/known_hosts")
    return os.stat(path).st_mtime_ns if os.path.exists(path) else None


@pytest.fixture(scope="module")
def one_host(tmp_path_factory):
    """{workers: losses} of the uninterrupted run on this host alone: horovodrun at W = 2, run.sh at W = 4."""
    root = tmp_path_factory.mktemp("one_host")
    _ok(_run(["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", "bash", "config.sh"], _env(root / "w2")))
    _ok(_run(["bash", "run.sh"], _env(root / "w4", NP=4)))
    losses = {2: losses_by_step(root / "w2"), 4: losses_by_step(root / "w4")}
    for w in losses:
        assert sorted(losses[w]) == list(range(1, TOTAL + 1)), losses
    return losses


def _check_two_host_run(out, host, logins_before, workers, one_host, log):
    assert "resumed from" in log and f"model-{HALF:04d}.json" in log
    assert host.logins() > logins_before, host.read_log()[-2000:]  # the second host's ranks came in by ssh
    meta = json.loads(open(checkpoint.latest(str(out))).read())
    assert meta["step"] == TOTAL and meta["world_size"] == workers and len(meta["shards"]) == workers
    got = losses_by_step(out)
    assert sorted(got) == list(range(1, TOTAL + 1))
    assert [got[s] for s in sorted(got)] == [one_host[workers][s] for s in sorted(got)]  # exact


def test_horovodrun_on_two_hosts_trains_checkpoints_and_resumes_as_one_host_does(second_host, one_host, tmp_path):
    known = _known_hosts()
    out, before = tmp_path / "model", second_host.logins()
    env = second_host.env(_env(out, PFC_MAX_STEPS=HALF))
    log = _ok(_run(horovodrun(second_host, 1), env))
    assert f"saved checkpoint {out}/model-{HALF:04d}.json" in log
    # Rank 1 ran on the second host: horovodrun started it through ssh with the forwarded environment.
    assert "[1]<stderr>:" in log
    log = _ok(_run(horovodrun(second_host, 1), second_host.env(_env(out, PFC_RESUME=1))))
    _check_two_host_run(out, second_host, before, 2, one_host, log)
    assert _known_hosts() == known  # nothing written to ~/.ssh


def test_run_sh_with_a_hostfile_of_two_hosts_trains_checkpoints_and_resumes_as_one_host_does(second_host, one_host,
                                                                                          tmp_path):
    out, before = tmp_path / "model", second_host.logins()
    _ok(_run(["bash", "run.sh"], run_sh_env(second_host, tmp_path, 2, out, PFC_MAX_STEPS=HALF)))
    assert checkpoint.latest(str(out)).endswith(f"model-{HALF:04d}.json")
    log = _ok(_run(["bash", "run.sh"], run_sh_env(second_host, tmp_path, 2, out, PFC_RESUME=1)))
    _check_two_host_run(out, second_host, before, 4, one_host, log)


NOT_SHARED = ("partial-fc: error: PFC_OUTPUT={out} is not one folder every host shares: rank 1 (host {second}) does "
              "not see the file rank 0 (host {first}) wrote there; every rank writes its checkpoint shard into "
              "PFC_OUTPUT, so it must be a shared folder (NFS, ...) mounted at that path on every host")


def _check_refused(p, out, logins_before, host):
    text = p.stdout
    assert p.returncode != 0, text[-3000:]
    assert host.logins() > logins_before
    expected = NOT_SHARED.format(out=out, first=socket.gethostname(), second=host.hostname)
    errors = [line for line in text.splitlines() if "partial-fc: error:" in line]
    assert errors and all(line.endswith(expected) for line in errors), text[-3000:]
    assert "step " not in text and "Partial FC training" not in text  # stopped before any training
    assert os.listdir(out) == []  # no checkpoint, no config.json, and the check's own file removed
    return errors


def test_an_output_folder_the_second_host_does_not_share_is_refused_under_horovodrun(private_outputs):
    host, (out, _) = private_outputs
    before = host.logins()
    p = _run(horovodrun(host, 1), host.env(_env(out)))
    errors = _check_refused(p, out, before, host)
    assert errors[0].startswith("[0]<stderr>:")  # rank 0 speaks for the job; rank 1 holds its line back


def test_an_output_folder_the_second_host_does_not_share_is_refused_under_mpirun_with_pfc_comm_mpi(private_outputs,
                                                                                                tmp_path):
    host, (_, out) = private_outputs
    before = host.logins()
    # After a failed rank, Open MPI's daemons wait 4 x odls_base_sigkill_timeout (run.sh: STOP_GRACE) to end.
    p = _run(["bash", "run.sh"], run_sh_env(host, tmp_path, 1, out, PFC_COMM="mpi", STOP_GRACE=2))
    _check_refused(p, out, before, host)
