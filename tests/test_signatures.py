"""X-Twilio-Signature checks, against signatures made by twilio's own RequestValidator."""

import pytest
from twilio.request_validator import RequestValidator

from relaylab.shell.signatures import public_urls, sign, verify

TOKEN = "0123456789abcdef0123456789abcdef"
OTHER_TOKEN = "fedcba9876543210fedcba9876543210"


def twilio_signs(url: str, params: dict | None = None, token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params or {})


def test_sign_matches_twilio():
    url = "https://abc.ngrok.app/twiml?CallSid=CA1"
    assert sign(TOKEN, url) == twilio_signs(url)
    params = {"CallSid": "CA1", "From": "+15550100"}
    assert sign(TOKEN, "https://abc.ngrok.app/twiml", params) == twilio_signs(
        "https://abc.ngrok.app/twiml", params
    )
    assert sign(TOKEN, url) != sign(OTHER_TOKEN, url)


def test_public_urls_from_public_url():
    assert public_urls(
        "/ws?lesson=3", host="127.0.0.1:8080", public_url="https://abc.ngrok.app", websocket=True
    ) == ["wss://abc.ngrok.app/ws?lesson=3"]
    assert public_urls(
        "/twiml", host="127.0.0.1:8080", public_url="abc.ngrok.app/", websocket=False
    ) == ["https://abc.ngrok.app/twiml"]


def test_public_urls_from_local_http_public_url_stays_plain():
    assert public_urls("/ws", host=None, public_url="http://localhost:9000", websocket=True) == [
        "ws://localhost:9000/ws"
    ]


def test_public_urls_from_host_header_secure_first():
    assert public_urls("/ws", host="relay.example", public_url=None, websocket=True) == [
        "wss://relay.example/ws",
        "ws://relay.example/ws",
    ]
    assert public_urls("/twiml?a=1", host="127.0.0.1:8080", public_url=None, websocket=False) == [
        "https://127.0.0.1:8080/twiml?a=1",
        "http://127.0.0.1:8080/twiml?a=1",
    ]


def test_public_urls_without_host_or_public_url_is_empty():
    assert public_urls("/ws", host=None, public_url=None, websocket=True) == []


def test_webhook_signed_for_its_url_is_accepted():
    signature = twilio_signs("https://relay.example/twiml?CallSid=CA1")
    assert (
        verify(
            TOKEN,
            path="/twiml?CallSid=CA1",
            host="relay.example",
            public_url=None,
            websocket=False,
            signature=signature,
        )
        is None
    )


def test_post_webhook_with_form_params_is_accepted_and_tampering_rejected():
    params = {"CallSid": "CA1", "From": "+15550100", "To": "+15550101"}
    signature = twilio_signs("https://relay.example/twiml", params)
    kwargs = dict(
        path="/twiml", host="relay.example", public_url=None, websocket=False, signature=signature
    )
    assert verify(TOKEN, params=params, **kwargs) is None
    assert verify(TOKEN, params={**params, "From": "+15559999"}, **kwargs) is not None


def test_local_simulated_call_signing_ws_url_is_accepted():
    signature = twilio_signs("ws://127.0.0.1:8080/ws")
    assert (
        verify(
            TOKEN,
            path="/ws",
            host="127.0.0.1:8080",
            public_url=None,
            websocket=True,
            signature=signature,
        )
        is None
    )


def test_tunnel_rebuilds_public_wss_url():
    # Twilio signed the url from the TwiML; the relay behind ngrok sees a local Host.
    signature = twilio_signs("wss://abc.ngrok.app/ws?lesson=tracking")
    kwargs = dict(
        path="/ws?lesson=tracking", host="localhost:8080", websocket=True, signature=signature
    )
    assert verify(TOKEN, public_url="https://abc.ngrok.app", **kwargs) is None
    # Without --public-url the local Host can't reproduce the signed URL.
    reason = verify(TOKEN, public_url=None, **kwargs)
    assert reason is not None
    assert "--public-url" in reason


def test_missing_signature_is_rejected():
    for missing in (None, ""):
        reason = verify(
            TOKEN,
            path="/ws",
            host="relay.example",
            public_url=None,
            websocket=True,
            signature=missing,
        )
        assert reason is not None
        assert reason.startswith("missing X-Twilio-Signature header")


@pytest.mark.parametrize(
    "signature",
    [
        "not-a-signature",
        twilio_signs("wss://relay.example/ws", token=OTHER_TOKEN),
        twilio_signs("wss://elsewhere.example/ws"),
        twilio_signs("wss://relay.example/ws?lesson=1"),
        twilio_signs("https://relay.example/ws"),
    ],
    ids=["forged", "other-token", "other-host", "other-query", "other-scheme"],
)
def test_wrong_signatures_are_rejected_with_a_reason(signature):
    reason = verify(
        TOKEN,
        path="/ws",
        host="relay.example",
        public_url=None,
        websocket=True,
        signature=signature,
    )
    assert reason is not None
    assert reason.startswith("X-Twilio-Signature does not match wss://relay.example/ws")
    assert "TWILIO_AUTH_TOKEN" in reason
    assert TOKEN not in reason


def test_reason_names_the_public_url_checked_and_never_the_token():
    reason = verify(
        TOKEN,
        path="/twiml",
        host="127.0.0.1:8080",
        public_url="https://abc.ngrok.app",
        websocket=False,
        signature=twilio_signs("https://abc.ngrok.app/twiml", token=OTHER_TOKEN),
    )
    assert reason == (
        "X-Twilio-Signature does not match https://abc.ngrok.app/twiml: is TWILIO_AUTH_TOKEN "
        "the auth token of the account that owns this number, and is --public-url the "
        "address Twilio calls?"
    )
    assert TOKEN not in reason
    assert OTHER_TOKEN not in reason


def test_no_host_and_no_public_url_is_rejected():
    reason = verify(
        TOKEN,
        path="/ws",
        host=None,
        public_url=None,
        websocket=True,
        signature=twilio_signs("wss://relay.example/ws"),
    )
    assert reason is not None
    assert "Host" in reason


def test_empty_token_is_a_programming_error():
    with pytest.raises(ValueError):
        sign("", "https://relay.example/twiml")
    with pytest.raises(ValueError):
        verify(
            "",
            path="/ws",
            host="relay.example",
            public_url=None,
            websocket=True,
            signature="x",
        )
