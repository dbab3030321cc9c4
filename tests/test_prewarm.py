"""Pre-warming the model connection (relaylab.relay.prewarm) against a stand-in that charges
each new connection a set-up delay, through the real SDK and real sockets."""

import pytest

CONNECT = 0.3  # the stand-in's cost of a new connection, seconds
FIRST_TOKEN = 0.05


def first_turn(make_lab, *, prewarm, dial=True):
    lab = make_lab(
        "tracking", first_token_delay=FIRST_TOKEN, connect_delay=CONNECT, prewarm=prewarm
    )
    call = lab.call(dial=dial)
    call.listen(0.5)  # the welcome greeting plays before the caller speaks
    reply = call.say("Tell me about dogs")
    call.hang_up()
    return lab, reply.arrivals[0] - reply.sent_at


def test_without_prewarm_the_first_turn_pays_for_the_connection(make_lab):
    lab, wait = first_turn(make_lab, prewarm=False)
    assert wait >= CONNECT + FIRST_TOKEN
    assert lab.offline_claude.connections == 1


@pytest.mark.parametrize("dial", [True, False], ids=["at-twiml", "at-setup"])
def test_prewarm_opens_the_connection_before_the_first_prompt(make_lab, dial):
    lab, wait = first_turn(make_lab, prewarm=True, dial=dial)
    assert wait < CONNECT, "the first turn reused the pre-warmed connection"
    assert lab.offline_claude.connections == 1, "one connection: opened early, then reused"
    (request,) = [r for r in lab.offline_claude.requests if r.stream]
    assert "Dogs" in request.reply


def test_the_stand_in_charges_only_new_connections(make_lab):
    lab = make_lab("tracking", first_token_delay=FIRST_TOKEN, connect_delay=CONNECT)
    call = lab.call()
    waits = []
    for said in ("Tell me about dogs", "And cats?"):
        reply = call.say(said)
        waits.append(reply.arrivals[0] - reply.sent_at)
    call.hang_up()
    assert waits[0] >= CONNECT and waits[1] < CONNECT
