"""A signal during a server's start-up: gevent (which pytriton's HTTP client runs on) passes it on
without printing it."""

import contextlib

import pytest

from vitdeploy.serve.triton import _gevent_passes_interrupts_quietly

gevent = pytest.importorskip("gevent")


def raise_interrupt() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("quiet", [False, True])
def test_a_signal_inside_gevents_loop_reaches_the_caller_printed_only_outside_the_server(quiet, capfd, monkeypatch):
    hub = gevent.get_hub()
    monkeypatch.setattr(hub, "NOT_ERROR", (gevent.GreenletExit, SystemExit))  # gevent's own (a test server may run)
    with _gevent_passes_interrupts_quietly() if quiet else contextlib.nullcontext():
        hub.loop.run_callback(raise_interrupt)
        with pytest.raises(KeyboardInterrupt):
            gevent.sleep(0)
    printed = capfd.readouterr().err
    assert ("failed with KeyboardInterrupt" not in printed) == quiet, printed
    assert hub.NOT_ERROR == (gevent.GreenletExit, SystemExit)
