import json

import pytest
from sqlalchemy import text

from opsagent.errors import AuthError
from opsagent.policy.identity import Role, TokenStore, require
from opsagent.policy.state import state_db


def test_tokens_are_stored_hashed_and_authenticate(state_url):
    store = TokenStore(state_url)
    token = store.add("alice", ["approver"])
    with store.db.read() as conn:
        stored = conn.execute(text("SELECT digest, record FROM tokens")).all()
    assert len(stored) == 1 and token not in repr(stored) and json.loads(stored[0].record)["name"] == "alice"
    who = store.authenticate(token)
    assert who.name == "alice" and who.roles == {Role.approver} and who.kind == "human"
    require(who, Role.approver)
    with pytest.raises(AuthError) as err:
        require(who, Role.admin)
    assert err.value.status == 403


@pytest.mark.parametrize("token", [None, "", "oat_wrong"])
def test_missing_or_unknown_tokens_are_401(tmp_path, token):
    store = TokenStore(state_db(tmp_path))
    store.add("alice", ["approver"])
    with pytest.raises(AuthError) as err:
        store.authenticate(token)
    assert err.value.status == 401


def test_admin_holds_every_role(state_url):
    store = TokenStore(state_url)
    admin = store.authenticate(store.add("root", ["admin"]))
    assert admin.roles == {Role.admin}  # one role held, every role granted
    for role in Role:
        assert admin.has(role)
        require(admin, role)
    auditor = store.authenticate(store.add("reader", ["auditor"]))
    for role in set(Role) - {Role.auditor}:  # no other role implies the rest
        assert not auditor.has(role)
