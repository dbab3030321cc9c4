"""relaylab.core.playback: crediting Twilio's tokensPlayed reports to replies, with no I/O."""

from relaylab.core.conversation import Conversation
from relaylab.core.playback import credit_played, heard_as_reported, played_out, still_playing
from relaylab.relay.session import RelayReply, ReplyState

FIRST = "Here are ten things. One, the euro was launched. Two, a new browser."
SECOND = "Dogs were the first animals people tamed."


def sent(text: str, id: int = 1, *, running: bool = False) -> RelayReply:
    return RelayReply(
        prompt="?", id=id, sent=text, state=ReplyState.RUNNING if running else ReplyState.DONE
    )


def test_reports_continue_the_reply_playing_chunk_by_chunk():
    reply = sent(FIRST)
    assert credit_played([reply], "Here are ten things.").reply is reply
    assert credit_played([reply], " One, the euro was launched.").reply is reply
    assert reply.played == "Here are ten things. One, the euro was launched."
    assert still_playing(reply) and reply.heard is None


def test_a_reply_sent_and_played_in_full_is_over_and_the_next_report_is_the_next_reply():
    first, second = sent(FIRST), sent(SECOND, 2)
    assert credit_played([first, second], FIRST).reply is first
    assert not still_playing(first)
    credit = credit_played([first, second], "Dogs were the first")
    assert credit.reply is second and credit.cut_off == []
    assert first.heard is None, "played through, not cut"


def test_a_report_that_begins_a_newer_reply_cuts_off_the_ones_before_it():
    first, middle, newest = sent(FIRST), sent("Cats came later.", 2), sent(SECOND, 3)
    credit_played([first, middle, newest], "Here are ten things. One, the euro")
    credit = credit_played([first, middle, newest], "Dogs were the first")
    assert credit.reply is newest and credit.cut_off == [first, middle]
    assert first.heard == "Here are ten things. One, the euro"
    assert middle.heard == "", "never began playing"
    assert not still_playing(first) and not still_playing(middle)


def test_words_count_and_whitespace_does_not():
    reply = sent("It opens at 9.\nTickets cost $12.")
    assert credit_played([reply], "It opens  at 9. ").reply is reply
    assert credit_played([reply], "Tickets cost").reply is reply


def test_text_of_no_reply_is_credited_to_none_and_changes_nothing():
    reply = sent(FIRST)
    for text in ("Welcome to the relay lab.", "", "   ", "One, the euro"):
        assert credit_played([reply], text).reply is None
    assert reply.played == "" and reply.heard is None, "a flood of reports cannot grow it"


def test_a_reply_still_streaming_keeps_playing_after_the_voice_caught_up():
    reply = sent("Here are", running=True)
    credit_played([reply], "Here are")
    assert still_playing(reply)
    reply.sent += " ten things."
    assert credit_played([reply], " ten things.").reply is reply


def test_an_interrupted_reply_is_over_and_no_report_lands_in_it():
    reply, newer = sent(FIRST), sent(SECOND, 2)
    credit_played([reply, newer], "Here are ten things.")
    reply.heard = "Here are ten things. One"  # an interrupt said so
    assert credit_played([reply, newer], " One, the euro").reply is None
    assert credit_played([reply, newer], "Dogs were").cut_off == []


def test_a_cut_reply_stored_in_the_history_is_cut_to_what_played():
    history = Conversation()
    history.add_user("Name ten things")
    history.add_assistant(FIRST)
    history.add_user("Tell me about dogs")
    history.add_assistant(SECOND)
    assert history.cut_reply(FIRST, "Here are ten things. One,")
    assert history[1] == {"role": "assistant", "content": "Here are ten things. One,"}
    assert history[3]["content"] == SECOND


def test_a_cut_reply_nothing_of_which_played_leaves_the_history():
    history = Conversation()
    history.add_user("Name ten things")
    history.add_assistant(FIRST)
    history.add_user("Tell me about dogs")
    assert history.cut_reply(FIRST, "")
    assert history == [{"role": "user", "content": "Name ten things Tell me about dogs"}]
    assert not history.cut_reply(SECOND, ""), "not stored: nothing to cut"


def test_cumulative_reports_of_the_played_text_are_taken_too():
    first, newest = sent(FIRST), sent(SECOND, 2)
    replies = [first, newest]
    assert credit_played(replies, "Here are ten things.").reply is first
    assert credit_played(replies, "Here are ten things. One, the euro").reply is first
    assert credit_played(replies, "Here are ten things. One, the euro").reply is first
    assert first.played == "Here are ten things. One, the euro", "a repeat changes nothing"
    credit = credit_played(replies, "Dogs were the first")
    assert credit.cut_off == [first] and first.heard == "Here are ten things. One, the euro"
    assert credit_played(replies, "Dogs were the first animals").reply is newest
    assert newest.played == "Dogs were the first animals"


def test_a_reply_with_no_words_yet_is_not_played_out_while_it_runs():
    waiting = sent("", running=True)
    assert not still_playing(waiting) and not played_out(waiting), "it may still speak"
    waiting.state = "cancelled"
    assert played_out(waiting), "stopped before a word: nothing of it will play"
    reply = sent(FIRST)
    credit_played([reply], FIRST)
    assert played_out(reply)


def test_without_preemption_a_report_that_skips_ahead_means_the_rest_played_unreported():
    first, newest = sent(FIRST), sent(SECOND, 2)
    credit_played([first, newest], "Here are ten things.", preemption=False)
    credit = credit_played([first, newest], "Dogs were the first", preemption=False)
    assert credit.reply is newest and credit.cut_off == []
    assert first.heard is None and first.played == FIRST and played_out(first)


def test_only_the_newest_few_replies_are_taken_as_playing_older_ones_played_through():
    from relaylab.core.playback import PLAYING_AT_ONCE

    replies = [sent(f"Reply number {i} of many.", i + 1) for i in range(3 * PLAYING_AT_ONCE)]
    assert credit_played(replies, "Nothing anyone sent").reply is None
    old, recent = replies[:-PLAYING_AT_ONCE], replies[-PLAYING_AT_ONCE:]
    assert all(played_out(r) and r.heard is None for r in old), "played through, not cut off"
    assert all(still_playing(r) for r in recent)
    first_recent = recent[0]
    assert credit_played(replies, first_recent.sent).reply is first_recent


def test_a_reply_far_behind_the_newest_counts_as_played_even_if_the_rest_were_reported():
    from relaylab.core.playback import SCANNED

    stuck = sent("Never reported at all.", 1)
    later = [sent(f"Reply number {i}.", i + 2) for i in range(2 * SCANNED)]
    for reply in later:
        reply.played = reply.sent  # each reported in full
    assert credit_played([stuck, *later], "Nothing anyone sent").reply is None
    assert played_out(stuck) and stuck.heard is None


def test_what_the_reports_say_was_heard_is_what_played_when_it_begins_the_reply():
    reply = sent(FIRST)
    assert heard_as_reported(reply) is None, "no report yet"
    credit_played([reply], "Here are ten things. ")
    assert heard_as_reported(reply) == "Here are ten things."
    stray = sent(FIRST)
    stray.played = "Dogs were"
    assert heard_as_reported(stray) is None, "a report that does not begin the reply"
