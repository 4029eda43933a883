"""The watchdog that turns a collective waiting on a dead or stuck rank into a one-line error and an exit."""
import io
import time

from partial_fc.training import watchdog


class FakeComm:
    rank = 1
    last_collective = "pfc.logits_max"


def _dog(timeout):
    exits = []
    stream = io.StringIO()
    dog = watchdog.Watchdog(FakeComm(), timeout, exit=exits.append, stream=stream, poll=0.02)
    return dog, exits, stream


def test_a_phase_past_its_limit_names_itself_and_the_last_collective_then_exits():
    dog, exits, stream = _dog(0.1)
    with dog.watch("step 7"):
        time.sleep(0.5)
    assert exits == [watchdog.EXIT_STALLED]
    line = stream.getvalue().strip()
    assert "\n" not in line and line.startswith("partial-fc: error: rank 1: step 7 did not finish within")
    assert "'pfc.logits_max'" in line and "another rank is dead or stuck" in line


def test_phases_within_their_limit_and_a_disabled_watchdog_never_exit():
    dog, exits, _ = _dog(0.3)
    for _ in range(3):
        with dog.watch("step", step=True):
            time.sleep(0.05)
    with dog.watch("verification", 2.0):
        time.sleep(0.4)  # past the step limit, within its own
    off, off_exits, _ = _dog(0)
    with off.watch("step"):
        time.sleep(0.2)
    time.sleep(0.1)
    assert exits == [] and off_exits == []


def test_the_step_limit_grows_with_the_recent_step_times():
    dog, _, _ = _dog(10)
    assert dog.step_limit() == 10
    for seconds in (1.0, 2.0, 3.0):
        dog._recent.append(seconds)
    assert dog.step_limit() == 10 + 5 * 2.0
