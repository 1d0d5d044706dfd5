import pytest

from opsagent.tools.platform.store import Database, next_id, row

SCHEMA = "CREATE TABLE IF NOT EXISTS things (thing_id TEXT PRIMARY KEY, n INTEGER NOT NULL);"


def test_transaction_commits_or_rolls_back(tmp_path):
    db = Database(tmp_path / "x.sqlite", SCHEMA)
    with db.transaction() as conn:
        conn.execute("INSERT INTO things VALUES (?, ?)", (next_id(conn, "things", "T"), 1))
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO things VALUES ('T-999999', 2)")
        raise RuntimeError("boom")
    with db.read() as conn:
        assert row(conn, "SELECT * FROM things") == {"thing_id": "T-000001", "n": 1}
        assert row(conn, "SELECT * FROM things WHERE n = 2") is None


def test_snapshot_and_digest_are_stable(tmp_path):
    db = Database(tmp_path / "x.sqlite", SCHEMA)
    first = db.digest()
    assert first["counts"] == {"idempotency_keys": 0, "things": 0}
    assert Database(tmp_path / "x.sqlite", SCHEMA).digest() == first  # reopening changes nothing
    with db.transaction() as conn:
        conn.execute("INSERT INTO things VALUES ('T-000001', 5)")
    assert db.digest()["digest"] != first["digest"]
    assert db.snapshot()["things"] == [{"thing_id": "T-000001", "n": 5}]
