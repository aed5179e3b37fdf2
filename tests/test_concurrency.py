"""Overlapping requests of one browser, through a real threaded server (waitress).

Every race here is forced, not hoped for: the views wait for each other at a
barrier after loading the session, so both requests have read it before
either writes. Each test runs 200 rounds, each with a fresh browser.
"""

import threading

import pytest
from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator
from served import Browser, Served

from pyramid_pgstore import get_store, revoke_other_sessions

ROUNDS = 200
auth = SessionAuthenticationHelper()


class Meeting:
    """Named barriers for two requests, made on first use."""

    def __init__(self):
        self.lock = threading.Lock()
        self.barriers = {}
        self.events = {}

    def barrier(self, name):
        with self.lock:
            return self.barriers.setdefault(name, threading.Barrier(2, timeout=20))

    def event(self, name):
        with self.lock:
            return self.events.setdefault(name, threading.Event())


def _meet(request):
    """Wait for the other request of this round, once the session is loaded."""
    name = request.params.get("meet")
    if name:
        request.registry.meeting.barrier(name).wait()


def start(request):
    request.session.update(request.params)
    return {}


def set_key(request):
    session = request.session
    session.get("anything")  # loaded now
    _meet(request)
    session[request.params["key"]] = request.params["value"]
    return {}


def delete_key(request):
    session = request.session
    session.get("anything")
    _meet(request)
    session.pop(request.params["key"], None)
    return {}


def flash(request):
    session = request.session
    session.get("anything")
    _meet(request)
    session.flash(request.params["message"])
    return {}


def read(request):
    return {"data": dict(request.session), "flashes": request.session.peek_flash()}


def login(request):
    if request.params.get("style") == "invalidate":  # the classic Pyramid login
        request.session.invalidate()
    auth.remember(request, request.params["user"])
    return {}


def slow(request):
    """Loads the session (unless ``late``), waits for ``release``, then reads or writes."""
    meeting = request.registry.meeting
    late = request.params.get("late") == "1"
    if not late:
        request.session.get("anything")
    meeting.event(request.params["loaded"]).set()
    assert meeting.event(request.params["release"]).wait(20)
    if request.params.get("write") == "1":
        request.session.flash("written by the slow request")
    return {"user": request.session.get("auth.userid")}


def whoami(request):
    return {"user": request.session.get("auth.userid")}


def revoke_others(request):
    return {"revoked": revoke_other_sessions(request)}


VIEWS = (start, set_key, delete_key, flash, read, login, slow, whoami, revoke_others)


@pytest.fixture
def served(pgstore_settings):
    with Configurator(settings={**pgstore_settings, "pgstore.max_length": "0"}) as config:
        config.include("pyramid_pgstore")
        for view in VIEWS:
            config.add_route(view.__name__, f"/{view.__name__}")
            config.add_view(view, route_name=view.__name__, renderer="json")
    config.registry.meeting = Meeting()
    server = Served(config.make_wsgi_app(), threads=4)
    server.registry = config.registry
    yield server
    server.close()


def rounds(served, setup="/start?seed=1"):
    for i in range(ROUNDS):
        browser = Browser(served.url)
        status, _, _ = browser.get(setup)
        assert status == 200
        yield i, browser


def test_two_requests_changing_different_keys_both_keep_their_change(served):
    lost = []
    for i, browser in rounds(served):
        results = browser.at_once(
            f"/set_key?key=a&value=A{i}&meet=r{i}", f"/set_key?key=b&value=B{i}&meet=r{i}"
        )
        assert [status for status, _, _ in results] == [200, 200]
        data = browser.get("/read")[1]["data"]
        if data != {"seed": "1", "a": f"A{i}", "b": f"B{i}"}:
            lost.append(data)
    assert lost == []


def test_a_delete_and_a_set_at_once_leave_the_set_and_not_the_deleted(served):
    wrong = []
    for i, browser in rounds(served, "/start?x=1"):
        browser.at_once(f"/delete_key?key=x&meet=r{i}", f"/set_key?key=y&value=Y{i}&meet=r{i}")
        data = browser.get("/read")[1]["data"]
        if data != {"y": f"Y{i}"}:
            wrong.append(data)
    assert wrong == []


def test_flash_messages_from_two_requests_at_once_both_survive(served):
    lost = []
    for i, browser in rounds(served):
        browser.at_once(f"/flash?message=one{i}&meet=r{i}", f"/flash?message=two{i}&meet=r{i}")
        flashes = browser.get("/read")[1]["flashes"]
        if sorted(flashes) != [f"one{i}", f"two{i}"]:
            lost.append(flashes)
    assert lost == []


def test_the_same_key_changed_by_both_keeps_one_of_the_two(served):
    for i, browser in rounds(served):
        results = browser.at_once(
            f"/set_key?key=k&value=A{i}&meet=r{i}", f"/set_key?key=k&value=B{i}&meet=r{i}"
        )
        assert [status for status, _, _ in results] == [200, 200]
        assert browser.get("/read")[1]["data"]["k"] in (f"A{i}", f"B{i}")  # the later write wins


def overlap_a_login(served, browser, i, *, write, late, style):
    """A slow request sent with the pre-login cookie, answered after the login."""
    meeting = served_meeting(served)
    loaded, release = f"loaded{i}", f"release{i}"
    outcome = {}
    path = f"/slow?loaded={loaded}&release={release}&write={int(write)}&late={int(late)}"
    thread = threading.Thread(target=lambda: outcome.setdefault("slow", browser.get(path)))
    thread.start()
    assert meeting.event(loaded).wait(20)
    login_status, _, login_cookies = browser.get(f"/login?user=ann&style={style}")
    meeting.event(release).set()
    thread.join(30)
    return login_status, login_cookies, outcome["slow"]


def served_meeting(served):
    return served.registry.meeting


@pytest.mark.parametrize("style", ["remember", "invalidate"])
@pytest.mark.parametrize(
    ("write", "late"),
    [(True, False), (False, False), (True, True), (False, True)],
    ids=["loaded-then-writes", "loaded-then-reads", "loads-after-then-writes", "loads-after-then-reads"],
)
def test_a_slow_request_overlapping_a_login_never_logs_the_user_out(served, write, late, style):
    logged_out = []
    for i, browser in rounds(served):
        login_status, login_cookies, (slow_status, _, slow_cookies) = overlap_a_login(
            served, browser, i, write=write, late=late, style=style
        )
        assert login_status == 200 and login_cookies  # the login set the new id
        assert slow_status == 200
        assert slow_cookies == []  # the slow one left the cookie alone
        if browser.get("/whoami")[1]["user"] != "ann":
            logged_out.append(i)
    assert logged_out == []


def test_a_request_in_flight_of_a_revoked_session_cannot_write_it_back(served, pgstore_dsn):
    laptop, phone = Browser(served.url), Browser(served.url)
    laptop.get("/login?user=ann")
    phone.get("/login?user=ann")
    meeting = served_meeting(served)
    outcome = {}
    path = "/slow?loaded=phone-loaded&release=phone-release&write=1"
    thread = threading.Thread(target=lambda: outcome.setdefault("phone", phone.get(path)))
    thread.start()
    assert meeting.event("phone-loaded").wait(20)
    assert laptop.get("/revoke_others")[1] == {"revoked": 1}
    meeting.event("phone-release").set()
    thread.join(30)
    status, _, cookies = outcome["phone"]
    assert status == 200 and cookies == []
    assert phone.get("/whoami")[1]["user"] is None
    assert laptop.get("/whoami")[1]["user"] == "ann"
    store = get_store(served.registry)
    assert len(store.sessions_of("ann")) == 1
