"""`tuneplex jobs watch` piped to a log still shows progress."""

from services.client.cli.jobs import PipedProgress


def test_a_piped_watch_prints_a_progress_line_every_twentieth_of_the_steps_and_the_last():
    piped = PipedProgress(every_s=3600)
    assert [s for s in range(1, 61) if piped.due(s, 60)] == list(range(3, 61, 3))
    piped = PipedProgress(every_s=3600)
    assert [s for s in range(1, 8) if piped.due(s, 7)] == [1, 2, 3, 4, 5, 6, 7]
