"""Third-party output is silenced (or sent to stderr with --verbose); edgetl's own log stays."""

from __future__ import annotations

import logging

import pytest

from edgetl import console


def chatter() -> None:
    print("library progress 1/3")
    logging.getLogger("somelib").warning("somelib is chatty")


def test_quiet_third_party_swallows_prints_and_logging_but_not_our_log(capsys):
    with console.quiet_third_party():
        chatter()
        console.log("edgetl step done")
    captured = capsys.readouterr()
    assert "library progress" not in captured.out + captured.err
    assert "edgetl step done" in captured.err and captured.out == ""
    assert logging.getLogger("somelib").isEnabledFor(logging.WARNING)  # restored afterwards


def test_verbose_sends_library_prints_to_stderr(capsys):
    console.set_verbose(True)
    try:
        with console.quiet_third_party():
            chatter()
    finally:
        console.set_verbose(False)
    captured = capsys.readouterr()
    assert captured.out == "" and "library progress 1/3" in captured.err


def test_swallowed_output_is_shown_when_the_block_fails(capsys):
    with pytest.raises(RuntimeError), console.quiet_third_party():
        print("the reason it broke")
        raise RuntimeError("boom")
    assert "the reason it broke" in capsys.readouterr().err


def test_plain_progress_lines_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(console, "PLAIN_EVERY_S", 0.0)
    assert list(console.track(range(3), "caching features")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "caching features: 1/3" in err and "caching features: 3 done" in err
