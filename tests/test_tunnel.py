"""Public endpoints, the ngrok tunnel (pyngrok faked) and the Twilio number update
(Twilio's REST API faked at the HTTP client)."""

import json
import re
from dataclasses import dataclass, field
from urllib.error import URLError

import pytest
import requests
from pyngrok import conf, installer, ngrok
from pyngrok.exception import PyngrokError, PyngrokNgrokError, PyngrokNgrokInstallError
from twilio.http import HttpClient
from twilio.http.response import Response
from twilio.rest import Client

from relaylab.cli import tunnel
from relaylab.cli.tunnel import (
    NumberChange,
    NumberSetupError,
    TunnelError,
    configure_number,
    open_tunnel,
)
from relaylab.shell.urls import PublicEndpoints, PublicUrlError, endpoints

# --- endpoints ---------------------------------------------------------------------------

EXPECTED = PublicEndpoints(
    base_url="https://abc.ngrok.app",
    twiml_url="https://abc.ngrok.app/twiml",
    ws_url="wss://abc.ngrok.app/ws",
    action_url="https://abc.ngrok.app/action",
)


@pytest.mark.parametrize(
    "given",
    ["https://abc.ngrok.app", "https://abc.ngrok.app/", "abc.ngrok.app", " abc.ngrok.app/ "],
)
def test_endpoints_from_host_or_https_url(given):
    assert endpoints(given) == EXPECTED


def test_endpoints_keep_a_port():
    e = endpoints("https://relay.example:8443")
    assert (e.twiml_url, e.ws_url) == (
        "https://relay.example:8443/twiml",
        "wss://relay.example:8443/ws",
    )


@pytest.mark.parametrize("local", ["http://localhost:8080", "http://127.0.0.1:8080/"])
def test_http_is_allowed_for_a_local_host(local):
    e = endpoints(local)
    host = local.removeprefix("http://").rstrip("/")
    assert e == PublicEndpoints(
        base_url=f"http://{host}",
        twiml_url=f"http://{host}/twiml",
        ws_url=f"ws://{host}/ws",
        action_url=f"http://{host}/action",
    )


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("http://abc.ngrok.app", "https://abc.ngrok.app"),
        ("ftp://abc.ngrok.app", "https://"),
        ("wss://abc.ngrok.app", "https://"),
        ("https://abc.ngrok.app/relay", "just scheme and host"),
        ("", "empty"),
        ("https://", "no host"),
    ],
)
def test_endpoints_reject_unusable_urls(bad, words):
    with pytest.raises(PublicUrlError, match=words):
        endpoints(bad)


# --- open_tunnel -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_ngrok_download(monkeypatch, tmp_path):
    """No test may fetch the ngrok agent: any download attempt fails as if offline."""

    def offline(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(installer, "_download_file", offline)
    monkeypatch.setattr(conf.get_default(), "ngrok_path", str(tmp_path / "bin" / "ngrok"))
    monkeypatch.setattr(conf.get_default(), "config_path", str(tmp_path / "ngrok.yml"))
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)


@dataclass
class FakeNgrok:
    public_url: str = "https://abc.ngrok.app"
    connects: list = field(default_factory=list)
    disconnects: list = field(default_factory=list)

    def connect(self, addr=None, proto=None, name=None, pyngrok_config=None, **options):
        self.connects.append((addr, proto, pyngrok_config))
        return ngrok.NgrokTunnel(
            {"name": "http-8080", "url": self.public_url, "upstream": {"url": addr}},
            pyngrok_config,
            "http://127.0.0.1:4040",
        )

    def disconnect(self, public_url, pyngrok_config=None):
        self.disconnects.append((public_url, pyngrok_config))


@pytest.fixture
def fake_ngrok(monkeypatch):
    fake = FakeNgrok()
    monkeypatch.setattr(ngrok, "connect", fake.connect)
    monkeypatch.setattr(ngrok, "disconnect", fake.disconnect)
    return fake


def test_missing_ngrok_token_is_a_clear_error(fake_ngrok):
    with pytest.raises(TunnelError, match="set NGROK_AUTHTOKEN") as info:
        open_tunnel(8080)
    assert "--public-url" in str(info.value)
    assert fake_ngrok.connects == []


def test_tunnel_success_gives_endpoints_and_close_disconnects(fake_ngrok):
    t = open_tunnel(8080, authtoken="ngrok-token-1")
    assert t.endpoints == EXPECTED
    [(addr, proto, config)] = fake_ngrok.connects
    assert (addr, proto) == ("8080", "http")
    assert config.auth_token == "ngrok-token-1"
    # The default config is copied, not changed process-wide.
    assert conf.get_default().auth_token != "ngrok-token-1"
    t.close()
    t.close()
    assert fake_ngrok.disconnects == [("https://abc.ngrok.app", config)]


def test_token_from_environment_and_http_url_upgraded(fake_ngrok, monkeypatch):
    monkeypatch.setenv("NGROK_AUTHTOKEN", "ngrok-token-env")
    fake_ngrok.public_url = "http://abc.ngrok.app"
    with open_tunnel(9000) as t:
        assert t.endpoints == EXPECTED
        assert fake_ngrok.connects[0][2].auth_token == "ngrok-token-env"
    assert [url for url, _ in fake_ngrok.disconnects] == ["https://abc.ngrok.app"]


def test_pyngrok_failure_is_a_tunnel_error(monkeypatch):
    def broken(*args, **kwargs):
        raise PyngrokNgrokError(
            "The ngrok process errored on start: authentication failed.",
            ngrok_error="authentication failed: Your authtoken: secret-ngrok-token "
            "is invalid. ERR_NGROK_105",
        )

    monkeypatch.setattr(ngrok, "connect", broken)
    with pytest.raises(TunnelError) as info:
        open_tunnel(8080, authtoken="secret-ngrok-token")
    message = str(info.value)
    assert "ngrok did not start a tunnel to port 8080" in message
    assert "ERR_NGROK_105" in message
    assert "NGROK_AUTHTOKEN" in message
    assert "secret-ngrok-token" not in message
    assert not isinstance(info.value, PyngrokError)


def test_generic_pyngrok_error_is_a_tunnel_error(monkeypatch):
    def broken(*args, **kwargs):
        raise PyngrokError('"public_url" was not populated for tunnel')

    monkeypatch.setattr(ngrok, "connect", broken)
    with pytest.raises(TunnelError, match='"public_url" was not populated'):
        open_tunnel(8080, authtoken="2abcdefghijklmnopqrstuvwxyz_0123456789")


def test_offline_ngrok_download_is_a_clear_tunnel_error(tmp_path):
    # Real pyngrok code path: no ngrok binary at ngrok_path, so it tries to download
    # it, and the download fails as it does on a machine without internet.
    config = conf.PyngrokConfig(
        ngrok_path=str(tmp_path / "bin" / "ngrok"), config_path=str(tmp_path / "ngrok.yml")
    )
    with pytest.raises(TunnelError, match="could not download the ngrok agent") as info:
        open_tunnel(8080, authtoken="secret-ngrok-token", pyngrok_config=config)
    assert "--public-url" in str(info.value)
    # pyngrok's own reason is passed on, whatever this machine's network says.
    with pytest.raises(PyngrokNgrokInstallError) as direct:
        installer.install_ngrok(config.ngrok_path)
    assert str(direct.value) in str(info.value)
    assert not (tmp_path / "bin" / "ngrok").exists()


# --- configure_number --------------------------------------------------------------------

ACCOUNT_SID = "AC" + "a" * 32
AUTH_TOKEN = "f00dfeedf00dfeedf00dfeedf00dfeed"
NUMBER_SID = "PN" + "b" * 32
NUMBER = "+15550101"
API = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}"
OLD_URL = "https://demo.twilio.com/welcome/voice/"
NEW_URL = "https://abc.ngrok.app/twiml"


def number_resource(voice_url: str, voice_method: str, phone_number: str = NUMBER) -> dict:
    """An IncomingPhoneNumber as Twilio's 2010-04-01 API returns it."""
    uri = f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers/{NUMBER_SID}.json"
    return {
        "account_sid": ACCOUNT_SID,
        "address_requirements": "none",
        "address_sid": None,
        "api_version": "2010-04-01",
        "beta": False,
        "bundle_sid": None,
        "capabilities": {"fax": False, "mms": True, "sms": True, "voice": True},
        "date_created": "Thu, 30 Jul 2015 23:19:04 +0000",
        "date_updated": "Thu, 30 Jul 2015 23:19:04 +0000",
        "emergency_address_sid": None,
        "emergency_address_status": "unregistered",
        "emergency_status": "Active",
        "friendly_name": "(555) 010-1",
        "identity_sid": None,
        "origin": "twilio",
        "phone_number": phone_number,
        "sid": NUMBER_SID,
        "sms_application_sid": "",
        "sms_fallback_method": "POST",
        "sms_fallback_url": "",
        "sms_method": "POST",
        "sms_url": "",
        "status": "in-use",
        "status_callback": "",
        "status_callback_method": "POST",
        "subresource_uris": {
            "assigned_add_ons": uri.replace(".json", "/AssignedAddOns.json"),
        },
        "trunk_sid": None,
        "type": "local",
        "uri": uri,
        "voice_application_sid": None,
        "voice_caller_id_lookup": False,
        "voice_fallback_method": "POST",
        "voice_fallback_url": None,
        "voice_method": voice_method,
        "voice_receive_mode": "voice",
        "voice_url": voice_url,
    }


def number_list(*numbers: dict) -> dict:
    first = (
        f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json"
        "?PhoneNumber=%2B15550101&PageSize=20&Page=0"
    )
    return {
        "end": max(len(numbers) - 1, 0),
        "first_page_uri": first,
        "incoming_phone_numbers": list(numbers),
        "next_page_uri": None,
        "page": 0,
        "page_size": 20,
        "previous_page_uri": None,
        "start": 0,
        "uri": first,
    }


AUTH_ERROR = {
    "code": 20003,
    "message": "Authenticate",
    "more_info": "https://www.twilio.com/docs/errors/20003",
    "status": 401,
}


class FakeTwilioApi(HttpClient):
    """Twilio's REST API for one account, at the HttpClient seam the SDK calls."""

    def __init__(
        self, numbers: list[dict], *, status: int | None = None, update_error: dict | None = None
    ):
        super().__init__(logger=None, is_async=False)
        self.numbers = numbers
        self.status = status
        self.update_error = update_error
        self.requests: list[dict] = []

    def request(self, method, uri, params=None, data=None, headers=None, auth=None, **kw):
        self.requests.append(
            {"method": method, "uri": uri, "params": params, "data": data, "auth": auth}
        )
        if self.status == 401 or auth != (ACCOUNT_SID, AUTH_TOKEN):
            return Response(401, json.dumps(AUTH_ERROR))
        if method == "GET" and uri == f"{API}/IncomingPhoneNumbers.json":
            wanted = params.get("PhoneNumber", "")
            found = [n for n in self.numbers if wanted in n["phone_number"]]
            return Response(200, json.dumps(number_list(*found)))
        if method == "POST" and uri == f"{API}/IncomingPhoneNumbers/{NUMBER_SID}.json":
            if self.update_error:
                return Response(self.update_error["status"], json.dumps(self.update_error))
            number = self.numbers[0]
            number.update(voice_url=data["VoiceUrl"], voice_method=data["VoiceMethod"])
            return Response(200, json.dumps(number))
        return Response(404, json.dumps({"code": 20404, "message": "not found", "status": 404}))


def client_for(api: FakeTwilioApi, token: str = AUTH_TOKEN) -> Client:
    return Client(ACCOUNT_SID, token, http_client=api)


def test_configure_number_updates_voice_url_and_method():
    api = FakeTwilioApi([number_resource(OLD_URL, "GET")])
    change = configure_number(NUMBER, NEW_URL, client=client_for(api))

    assert change == NumberChange(
        sid=NUMBER_SID,
        phone_number=NUMBER,
        old_voice_url=OLD_URL,
        old_voice_method="GET",
        new_voice_url=NEW_URL,
        new_voice_method="POST",
    )
    assert change.changed
    assert str(change) == f"{NUMBER} ({NUMBER_SID}): voice webhook GET {OLD_URL} -> POST {NEW_URL}"

    lookup, update = api.requests
    assert lookup["method"] == "GET"
    assert lookup["uri"] == f"{API}/IncomingPhoneNumbers.json"
    assert lookup["params"]["PhoneNumber"] == NUMBER
    assert update["method"] == "POST"
    assert update["uri"] == f"{API}/IncomingPhoneNumbers/{NUMBER_SID}.json"
    assert update["data"] == {"VoiceUrl": NEW_URL, "VoiceMethod": "POST"}
    assert api.numbers[0]["voice_url"] == NEW_URL


def test_configure_number_builds_client_from_environment(monkeypatch):
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    api = FakeTwilioApi([number_resource(NEW_URL, "POST")])
    change = configure_number("+1 555-0101", NEW_URL, http_client=api)
    assert [r["auth"] for r in api.requests] == [(ACCOUNT_SID, AUTH_TOKEN)] * 2
    assert not change.changed
    assert str(change) == f"{NUMBER} ({NUMBER_SID}): voice webhook already POST {NEW_URL}"


def test_partial_match_of_another_number_is_not_used():
    api = FakeTwilioApi([number_resource(OLD_URL, "POST", phone_number="+155501019")])
    with pytest.raises(NumberSetupError, match=r"\+15550101 is not a phone number on"):
        configure_number(NUMBER, NEW_URL, client=client_for(api))
    assert [r["method"] for r in api.requests] == ["GET"]


def test_number_not_on_account():
    api = FakeTwilioApi([])
    with pytest.raises(NumberSetupError) as info:
        configure_number(NUMBER, NEW_URL, client=client_for(api))
    message = str(info.value)
    assert f"{NUMBER} is not a phone number on Twilio account {ACCOUNT_SID}" in message
    assert [r["method"] for r in api.requests] == ["GET"]


def test_twilio_401_is_a_clear_error_without_the_token():
    api = FakeTwilioApi([number_resource(OLD_URL, "POST")], status=401)
    with pytest.raises(NumberSetupError) as info:
        configure_number(NUMBER, NEW_URL, client=client_for(api))
    message = str(info.value)
    assert "HTTP 401" in message
    assert "20003" in message
    assert "TWILIO_AUTH_TOKEN" in message
    assert AUTH_TOKEN not in message
    assert not isinstance(info.value, tunnel.TwilioRestException)
    assert info.value.__cause__ is None


def test_twilio_error_on_update_is_a_clear_error():
    bad_url = {
        "code": 21502,
        "message": "Invalid url",
        "more_info": "https://www.twilio.com/docs/errors/21502",
        "status": 400,
    }
    api = FakeTwilioApi([number_resource(OLD_URL, "POST")], update_error=bad_url)
    with pytest.raises(NumberSetupError) as info:
        configure_number(NUMBER, NEW_URL, client=client_for(api))
    message = str(info.value)
    assert message.startswith(f"Twilio refused to update {NUMBER} (HTTP 400, error 21502):")
    assert "Invalid url" in message
    assert AUTH_TOKEN not in message
    assert [r["method"] for r in api.requests] == ["GET", "POST"]


def test_twilio_unreachable_is_a_clear_error():
    class Offline(HttpClient):
        def __init__(self):
            super().__init__(logger=None, is_async=False)

        def request(self, *args, **kwargs):
            raise requests.ConnectionError("Failed to resolve 'api.twilio.com'")

    with pytest.raises(NumberSetupError, match="could not reach Twilio to look up"):
        configure_number(
            NUMBER, NEW_URL, client=Client(ACCOUNT_SID, AUTH_TOKEN, http_client=Offline())
        )


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"),
        ({"TWILIO_ACCOUNT_SID": ACCOUNT_SID}, "set TWILIO_AUTH_TOKEN ("),
        ({"TWILIO_AUTH_TOKEN": AUTH_TOKEN}, "set TWILIO_ACCOUNT_SID ("),
    ],
)
def test_missing_credentials(monkeypatch, env, missing):
    monkeypatch.delenv("TWILIO_ACCOUNT_SID", raising=False)
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    api = FakeTwilioApi([number_resource(OLD_URL, "POST")])
    with pytest.raises(NumberSetupError, match=re.escape(missing)) as info:
        configure_number(NUMBER, NEW_URL, http_client=api)
    assert AUTH_TOKEN not in str(info.value)
    assert api.requests == []


@pytest.mark.parametrize("bad", ["5550101", "+0123", "call me", ""])
def test_number_must_be_e164(bad):
    api = FakeTwilioApi([number_resource(OLD_URL, "POST")])
    with pytest.raises(NumberSetupError, match=r"E\.164"):
        configure_number(bad, NEW_URL, client=client_for(api))
    assert api.requests == []
