"""Progress lines and bars: plain log lines with counts, rate and ETA (the loop's, and a longer job's) without
bars; a bar, and no lines, with them."""

from __future__ import annotations

import logging

import pytest

from rcca import progress
from rcca.progress import Ahead, count_of, duration, track


class FakeClock:
    """A clock that advances by `step` seconds every time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "rcca.progress"]


def test_plain_lines_give_counts_rate_and_time_left(monkeypatch, caplog, capsys):
    # The clock is read once at the start and once per item: item i is done at second i + 1 after the start.
    monkeypatch.setattr(progress, "monotonic", FakeClock(step=1.0))
    caplog.set_level(logging.INFO, logger="rcca.progress")
    items = list(track(range(10), total=10, desc="evaluating", bars=False, log_every_s=4.0))
    assert items == list(range(10))
    # Lines at items 4 and 8 (4 s apart): 1 item/s, so 6 and 2 items (seconds) are left; then the final line.
    assert progress_lines(caplog) == [
        "evaluating: 4/10 batches (40%), 1.0 batch/s, ETA 6 s",
        "evaluating: 8/10 batches (80%), 1.0 batch/s, ETA 2 s",
        "evaluating: 10/10 batches (100%), 0.9 batch/s, in 11 s",
    ]
    assert capsys.readouterr().err == ""  # no bar


def test_plain_lines_count_a_resumed_start_and_an_unknown_total(monkeypatch, caplog):
    monkeypatch.setattr(progress, "monotonic", FakeClock(step=0.5))
    caplog.set_level(logging.INFO, logger="rcca.progress")
    list(track(range(3), total=8, desc="epoch 2/6", bars=False, initial=5, log_every_s=1.0, unit="update"))
    # 5 updates were done before: 3 more at 2 per second, so the first line (after 2 of them) leaves 1 (0.5 s).
    assert progress_lines(caplog)[0] == "epoch 2/6: 7/8 updates (87%), 2.0 update/s, ETA 0 s"
    caplog.clear()
    list(track(iter(range(1)), total=None, desc="reading", bars=False, unit="video"))
    assert progress_lines(caplog) == ["reading: 1 video, 1.0 video/s, in 1 s"]


def test_a_loop_left_early_still_gets_its_final_line(monkeypatch, caplog):
    monkeypatch.setattr(progress, "monotonic", FakeClock(step=1.0))
    caplog.set_level(logging.INFO, logger="rcca.progress")
    for item in track(range(10), total=10, desc="epoch 1/1", bars=False):
        if item == 2:
            break
    # Items 0 to 2 were done (the loop left after item 2), 4 s after the start.
    assert progress_lines(caplog) == ["epoch 1/1: 3/10 batches (30%), 0.8 batch/s, in 4 s"]


def test_plain_lines_of_an_epoch_give_the_runs_eta_too(monkeypatch, caplog):
    monkeypatch.setattr(progress, "monotonic", FakeClock(step=1.0))
    caplog.set_level(logging.INFO, logger="rcca.progress")
    # After this epoch: 20 batches of later epochs (at this epoch's rate) and 5 s of timed validations.
    ahead = Ahead(label="run", items=20, seconds=5.0)
    list(track(range(10), total=10, desc="epoch 1/3", bars=False, log_every_s=4.0, ahead=ahead))
    # At item 4 (1 item/s): 6 s left in the epoch; the run has 6 + 20 batches (26 s) and 5 s of validation left.
    # The final line (10 items in 11 s): 20 batches at 10/11 per second (22 s) and the validations.
    assert progress_lines(caplog) == [
        "epoch 1/3: 4/10 batches (40%), 1.0 batch/s, ETA 6 s, run ETA 31 s",
        "epoch 1/3: 8/10 batches (80%), 1.0 batch/s, ETA 2 s, run ETA 27 s",
        "epoch 1/3: 10/10 batches (100%), 0.9 batch/s, in 11 s, run ETA 27 s",
    ]


def test_work_not_timed_yet_is_named_and_a_loop_left_early_gives_no_run_eta(monkeypatch, caplog):
    monkeypatch.setattr(progress, "monotonic", FakeClock(step=1.0))
    caplog.set_level(logging.INFO, logger="rcca.progress")
    ahead = Ahead(label="run", items=5, untimed="2 validations")
    for item in track(range(10), total=10, desc="epoch 1/2", bars=False, log_every_s=4.0, ahead=ahead):
        if item == 5:
            break  # a stop signal: the run's ETA no longer applies
    assert progress_lines(caplog) == [
        "epoch 1/2: 4/10 batches (40%), 1.0 batch/s, ETA 6 s, run ETA 11 s + 2 validations",
        "epoch 1/2: 6/10 batches (60%), 0.9 batch/s, in 7 s",
    ]


def test_bars_draw_a_bar_and_log_no_lines(caplog, capsys):
    caplog.set_level(logging.INFO, logger="rcca.progress")
    assert list(track(range(3), total=3, desc="evaluating", bars=True)) == [0, 1, 2]
    assert progress_lines(caplog) == []
    err = capsys.readouterr().err
    assert "evaluating:" in err and "/3 [" in err  # tqdm's bar, cleared at the end (leave=False)


def test_log_records_go_through_tqdm_while_a_bar_is_shown(capsys):
    handler = logging.StreamHandler()  # the terminal handler a logging config installs on the root logger
    logging.getLogger().addHandler(handler)
    try:
        for _ in track(range(1), total=1, desc="evaluating", bars=True):
            assert handler not in logging.getLogger().handlers  # replaced by tqdm's for the bar's lifetime
            logging.getLogger("rcca.test").warning("a message during the bar")
        assert handler in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(handler)
    assert "a message during the bar" in capsys.readouterr().err


@pytest.mark.parametrize(
    "number, unit, expected",
    [
        (1, "batch", "1 batch"),
        (2, "batch", "2 batches"),
        (0, "video", "0 videos"),
        (1, "clip", "1 clip"),
    ],
)
def test_counts_are_in_the_right_number(number, unit, expected):
    assert count_of(number, unit) == expected


@pytest.mark.parametrize("seconds, expected", [(8.2, "8 s"), (68, "1 min 8 s"), (7500, "2 h 5 min"), (-1, "0 s")])
def test_durations_read_naturally(seconds, expected):
    assert duration(seconds) == expected
