"""The demo's lesson 3 shows what tracking changes: the frames after the cut, the stored
turn and the answer to "how far did you get?", for both versions."""

from relaylab.cli import demo
from relaylab.notebook.lab import Lab


def test_lesson_3_of_the_demo_differs_where_tracking_does(capsys):
    # Half the demo's token rate: the caller still cuts in mid-reply on a busy machine.
    pacing = {**demo.QUICK_INTERRUPT_PACING, "tokens_per_second": 40.0}
    with Lab("streaming", offline=True, **pacing) as lab:
        demo._interruption_lesson(lab, quick=True)
    out = " ".join(capsys.readouterr().out.split())  # the demo wraps its lines
    without, with_tracking = out.split("With tracking, the relay cancels")
    assert "never heard, stored anyway" in without
    assert "I got all the way to the end" in without
    assert "... and 0 more words" not in without
    assert "[exactly what the caller heard]" in with_tracking
    assert "You stopped me just after I said" in with_tracking
    assert "... and 0 more words arrived after the interrupt." in with_tracking


def test_lesson_6_of_the_demo_resumes_after_uh_huh_with_one_request(capsys):
    step = demo.turns_step(resume_wait=0.5, silence_after=60.0)
    with Lab(step, offline=True, **demo.QUICK_INTERRUPT_PACING) as lab:
        demo._turns_lesson(lab)
        requests = len(lab.offline_claude.requests)
    out = " ".join(capsys.readouterr().out.split())
    assert requests == 1
    assert "caller: Tell me about dogs" in out
    assert "claude (resumed): " in out and "particular breed?" in out
    assert "1 request to Claude, and the history holds 1 assistant turn" in out
