"""The command line's conventions that need no running system: --version, exit codes, the eval
group and its old spellings, shell completion, local token management."""

from __future__ import annotations

import json

import pytest

from opsagent.policy.state import STATE_FILE, state_db

from opsagent.cli import main


def test_version_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("opsagent ")
    for wrong in (["no-such-command"], ["tokens"], ["tokens", "add", "x"], ["audit", "--bogus"]):
        with pytest.raises(SystemExit) as usage:
            main(wrong)
        assert usage.value.code == 2, wrong


def test_eval_is_one_group_and_the_old_spellings_still_work(tmp_path, capsys):
    missing = str(tmp_path / "no-set")
    for argv in (["eval", "run", "--set", missing], ["eval", "--set", missing], ["evals", "--set", missing]):
        assert main(argv) == 2, argv  # reached `eval run`, which refuses the missing folder
        assert "eval set folder" in capsys.readouterr().err
    from opsagent.cli import _argv, _parser

    for argv in (["eval", "regressions", str(tmp_path)], ["evals", "regressions", str(tmp_path)],
                 ["evals", "add-case", "case-1"]):
        args = _parser().parse_args(_argv(argv))
        assert args.command == "eval" and args.eval_command == argv[1]
    assert "`evals` is deprecated" in capsys.readouterr().err
    with pytest.raises(SystemExit) as helped:
        main(["eval", "--help"])
    assert helped.value.code == 0 and "add-case" in capsys.readouterr().out


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script(shell, capsys):
    assert main(["completion", shell]) == 0
    assert "opsagent" in capsys.readouterr().out


def test_tokens_have_a_lifecycle_on_the_local_store(tmp_path, capsys):
    from opsagent.errors import AuthError
    from opsagent.policy.identity import TokenStore

    state = ["--state", str(tmp_path)]
    assert main(["tokens", "add", "alice", "--role", "approver", "--expires", "30d", *state]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("oat_") and "tok-" in out.err and "expires 20" in out.err
    store = TokenStore(state_db(tmp_path))
    assert store.authenticate(token).name == "alice"
    assert main(["tokens", "list", "--json", *state]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["name"] == "alice" and listed["expires_at"] and listed["last_used_at"]
    assert "token" not in listed and token.encode() not in (tmp_path / STATE_FILE).read_bytes()
    assert main(["tokens", "list", *state]) == 0
    assert "active" in capsys.readouterr().out
    assert main(["tokens", "revoke", listed["token_id"], *state]) == 0
    assert f"revoked {listed['token_id']} of alice" in capsys.readouterr().out
    with pytest.raises(AuthError, match="is revoked") as refused:
        store.authenticate(token)
    assert refused.value.status == 401 and "alice" in refused.value.subject
    assert main(["tokens", "revoke", "alice", *state]) == 1  # nothing active left to revoke
    assert main(["tokens", "add", "bob", "--role", "admin", "--expires", "soon", *state]) == 2
    assert "a duration is a number and a unit" in capsys.readouterr().err


def test_an_expired_token_is_refused(tmp_path):
    import time

    from opsagent.errors import AuthError
    from opsagent.policy.identity import TokenStore, parse_duration

    assert parse_duration("30d") == 30 * 86400 and parse_duration("90m") == 5400
    assert parse_duration("never") is None
    store = TokenStore(tmp_path / "state.sqlite")
    token = store.add("carol", ["auditor"], expires_s=0.2)
    assert store.authenticate(token).name == "carol"
    time.sleep(0.3)
    with pytest.raises(AuthError, match="is expired"):
        store.authenticate(token)
    assert [i.state() for i in store.listing()] == ["expired"]


def test_a_last_use_written_concurrently_never_undoes_a_revocation(tmp_path):
    import threading

    from opsagent.errors import AuthError
    from opsagent.policy import identity
    from opsagent.policy.identity import TokenStore

    path = state_db(tmp_path)
    tokens = [TokenStore(path).add(f"user{i}", ["auditor"]) for i in range(8)]
    stores = [TokenStore(path) for _ in range(4)]  # like Serve replicas, each with its own lock
    identity.LAST_USED_EVERY_S, saved = 0.0, identity.LAST_USED_EVERY_S
    try:
        def use(store):
            for _ in range(20):
                for t in tokens[1:]:
                    store.authenticate(t)
        threads = [threading.Thread(target=use, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        TokenStore(path).revoke("user0", by="admin")
        for t in threads:
            t.join()
    finally:
        identity.LAST_USED_EVERY_S = saved
    with pytest.raises(AuthError, match="revoked"):
        TokenStore(path).authenticate(tokens[0])


def test_catalogue_list_prints_json(capsys):
    assert main(["catalogue", "list", "--json"]) == 0
    classes = {c["class"]: c for c in json.loads(capsys.readouterr().out)}
    assert classes["weight_mismatch"]["systems"] == ["wms", "tms"]
    assert classes["weight_mismatch"]["write_steps"] == {"tms_open_weight_dispute": ["low"]}
    assert 0 < classes["weight_mismatch"]["escalate_share"] < 1
