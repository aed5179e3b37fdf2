"""The decision at the end of a request, state by state, without a database:
what :func:`pyramid_pgstore.lifecycle.decide` writes and does with the cookie."""

import pytest

from pyramid_pgstore.lifecycle import (
    Cookie,
    Ending,
    Found,
    Owner,
    Plan,
    Situation,
    Stage,
    Write,
    decide,
)

NOTHING = Plan(Write.NOTHING, Cookie.KEEP)


def loaded(**facts):
    """A request that read a live session."""
    return Situation(Found.LIVE, Stage.STORED, has_data=True, **facts)


# -- a request that holds no stored session ------------------------------------


@pytest.mark.parametrize("found", [Found.NOTHING, Found.UNREADABLE, Found.DEAD, Found.ENDED])
def test_no_session_and_no_data_writes_nothing_and_sets_no_cookie(found):
    assert decide(Situation(found, Stage.NEW)) == NOTHING


@pytest.mark.parametrize("found", [Found.NOTHING, Found.UNREADABLE])
def test_data_without_a_session_inserts_one_and_sets_its_cookie(found):
    assert decide(Situation(found, Stage.NEW, has_data=True)) == Plan(Write.INSERT, Cookie.SET)


def test_data_for_a_dead_cookie_takes_over_its_row():
    plan = decide(Situation(Found.DEAD, Stage.NEW, has_data=True))
    assert plan == Plan(Write.INSERT, Cookie.SET, takes_over=True)


def test_data_for_a_cookie_another_request_just_ended_is_dropped_unless_it_is_a_login():
    # The browser may already hold that request's newer cookie.
    assert decide(Situation(Found.ENDED, Stage.NEW, has_data=True)) == NOTHING
    login = Situation(Found.ENDED, Stage.NEW, has_data=True, owner=Owner.SIGNED_IN)
    assert decide(login) == Plan(Write.INSERT, Cookie.SET)


def test_a_session_lost_to_another_request_writes_only_a_login():
    assert decide(Situation(Found.LIVE, Stage.LOST, has_data=True)) == NOTHING
    login = Situation(Found.LIVE, Stage.LOST, has_data=True, owner=Owner.SIGNED_IN)
    assert decide(login) == Plan(Write.INSERT, Cookie.SET)


def test_after_invalidate_the_cookie_is_dropped_and_stands():
    assert decide(Situation(Found.LIVE, Stage.ENDED)) == Plan(Write.NOTHING, Cookie.DROP, stands=True)


def test_data_written_after_invalidate_goes_to_a_brand_new_session():
    plan = decide(Situation(Found.LIVE, Stage.ENDED, has_data=True))
    assert plan == Plan(Write.INSERT, Cookie.SET)


# -- a request that holds a stored session -------------------------------------


def test_a_session_only_read_writes_nothing():
    assert decide(loaded()) == NOTHING
    assert decide(loaded(persistent_cookie=True)) == NOTHING  # Max-Age is pushed only with a write


def test_a_change_replaces_the_data_keeping_the_expiry_unless_a_refresh_is_due():
    assert decide(loaded(changed=True)) == Plan(Write.REPLACE, Cookie.KEEP)
    assert decide(loaded(changed=True, refresh_due=True)) == Plan(Write.REPLACE, Cookie.KEEP, refresh=True)
    assert decide(loaded(changed=True, persistent_cookie=True)) == Plan(Write.REPLACE, Cookie.SET)


def test_a_read_past_reissue_time_touches_the_expiry():
    assert decide(loaded(refresh_due=True)) == Plan(Write.TOUCH, Cookie.KEEP)
    assert decide(loaded(refresh_due=True, persistent_cookie=True)) == Plan(Write.TOUCH, Cookie.SET)


def test_a_cookie_signed_by_a_retired_secret_is_signed_again_with_no_write():
    assert decide(loaded(old_secret=True)) == Plan(Write.NOTHING, Cookie.SET)


@pytest.mark.parametrize("owner", [Owner.SIGNED_IN, Owner.SIGNED_OUT])
def test_a_change_of_user_renews_the_id(owner):
    plan = decide(loaded(owner=owner))
    assert plan.write is Write.RENEW and plan.cookie is Cookie.SET


def test_a_change_of_user_without_renew_on_login_replaces_in_place():
    assert decide(loaded(changed=True, owner=Owner.SIGNED_IN, renew_on_login=False)) == Plan(
        Write.REPLACE, Cookie.KEEP
    )


def test_renew_asked_for_at_commit_renews():
    assert decide(loaded(renew_asked=True)) == Plan(Write.RENEW, Cookie.SET)


def test_a_logout_that_keeps_data_renews_outside_the_transaction():
    assert decide(loaded(owner=Owner.SIGNED_OUT)) == Plan(Write.RENEW, Cookie.SET, stands=True)


def test_a_logout_that_leaves_nothing_ends_the_session_outside_the_transaction():
    logout = Situation(Found.LIVE, Stage.STORED, owner=Owner.SIGNED_OUT)
    assert decide(logout) == Plan(Write.END, Cookie.DROP, stands=True)


def test_an_emptied_session_without_a_logout_stays_empty():
    # Another request may be adding to it.
    emptied = Situation(Found.LIVE, Stage.STORED, changed=True)
    assert decide(emptied) == Plan(Write.REPLACE, Cookie.KEEP)


def test_a_new_lifetime_is_written_with_a_new_expiry_and_the_cookie_sent_again():
    # set_expiry(): the row's lifetime and expiry, and the cookie's Max-Age (or none).
    assert decide(loaded(lifetime_changed=True)) == Plan(Write.REPLACE, Cookie.SET, refresh=True)
    assert decide(loaded(lifetime_changed=True, changed=True)) == Plan(
        Write.REPLACE, Cookie.SET, refresh=True
    )


def test_a_new_lifetime_at_login_rides_on_the_renewal():
    assert decide(loaded(lifetime_changed=True, owner=Owner.SIGNED_IN)) == Plan(Write.RENEW, Cookie.SET)


def test_a_session_renewed_earlier_in_the_request_sends_its_new_id():
    renewed = Situation(Found.LIVE, Stage.RENEWED, has_data=True)
    assert decide(renewed) == Plan(Write.NOTHING, Cookie.SET)
    assert decide(Situation(Found.LIVE, Stage.RENEWED, has_data=True, changed=True)) == Plan(
        Write.REPLACE, Cookie.SET
    )


def test_a_logout_after_a_renewal_in_the_transaction_stays_in_it():
    renewed = Situation(Found.LIVE, Stage.RENEWED, owner=Owner.SIGNED_OUT)
    assert decide(renewed) == Plan(Write.END, Cookie.DROP, stands=False)


# -- how the request ends ------------------------------------------------------


def test_a_view_that_raised_without_set_on_exception_writes_nothing():
    raised = loaded(changed=True, refresh_due=True, ending=Ending.EXCEPTION)
    assert decide(raised) == NOTHING


def test_without_set_on_exception_what_already_happened_to_the_row_still_reaches_the_cookie():
    renewed = Situation(Found.LIVE, Stage.RENEWED, ending=Ending.EXCEPTION, changed=True)
    assert decide(renewed) == Plan(Write.NOTHING, Cookie.SET)
    ended = Situation(Found.LIVE, Stage.ENDED, ending=Ending.EXCEPTION, has_data=True)
    assert decide(ended) == Plan(Write.NOTHING, Cookie.DROP, stands=True)


def test_an_aborted_transaction_saves_nothing_and_keeps_the_cookie():
    aborted = loaded(changed=True, owner=Owner.SIGNED_IN, ending=Ending.ABORTED)
    assert decide(aborted) == NOTHING
    new = Situation(Found.NOTHING, Stage.NEW, has_data=True, ending=Ending.ABORTED)
    assert decide(new) == NOTHING


def test_an_aborted_transaction_still_logs_out():
    forgot = loaded(owner=Owner.SIGNED_OUT, ending=Ending.ABORTED)
    assert decide(forgot) == Plan(Write.END, Cookie.DROP, stands=True)
    invalidated = Situation(Found.LIVE, Stage.ENDED, has_data=True, ending=Ending.ABORTED)
    assert decide(invalidated) == Plan(Write.NOTHING, Cookie.DROP, stands=True)


def test_every_situation_has_exactly_one_plan():
    """The whole table: no combination of states is left undecided or raises."""
    import dataclasses
    import itertools

    flags = [f.name for f in dataclasses.fields(Situation) if f.type == "bool"]
    seen = set()
    for found, stage, ending, owner, *values in itertools.product(
        Found, Stage, Ending, Owner, *([(False, True)] * len(flags))
    ):
        plan = decide(Situation(found, stage, ending, owner=owner, **dict(zip(flags, values, strict=True))))
        assert isinstance(plan, Plan)
        if plan.write is not Write.NOTHING:
            # Only a held session is written over, touched, renewed or ended.
            held = stage in (Stage.STORED, Stage.RENEWED)
            assert held == (plan.write is not Write.INSERT)
        seen.add(plan.write)
    assert seen == set(Write)
