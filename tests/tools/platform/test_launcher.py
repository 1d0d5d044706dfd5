import httpx
import pytest

from opsagent.tools.platform import Platform, inject_weight_mismatch


def test_restart_on_the_same_folder_keeps_data(tmp_path):
    with Platform(tmp_path, background=5) as first:
        assert all(url.startswith("http://127.0.0.1:") for url in first.base_urls.values())
        (planted,) = inject_weight_mismatch(first, count=1, seed=7, suspect_share=0.0)
        sid = planted.entities["shipment_id"]
        reg = first.registry()
        with httpx.Client() as client:
            url = f"{reg.base_url('tms')}/shipments/{sid}/weight-disputes"
            client.post(url, json={"claimed_weight_kg": 1.0, "reason": "scan lower"},
                        headers={"Idempotency-Key": "restart-1"}).raise_for_status()
        digests = {s: first.digest(s) for s in first.base_urls}
        old_urls = dict(first.base_urls)
    assert (tmp_path / "tms.sqlite").exists() and (tmp_path / "wms.sqlite").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{old_urls['tms']}/openapi.json", timeout=1)

    with Platform(tmp_path, background=5) as second:  # not re-seeded: the systems are not empty
        assert {s: second.digest(s) for s in second.base_urls} == digests
        body = httpx.get(f"{second.base_urls['tms']}/shipments/{sid}").json()
        assert body["open_dispute_id"] is not None


def test_start_plants_the_background_and_stop_removes_temp_data():
    # (how fast it starts is measured, not asserted: timings belong to benchmarks, and a loaded
    # CI machine made a 5 s bound here fail)
    platform = Platform(background=3)
    with platform:
        assert platform.digest("wms")["counts"]["shipments"] == 3
        data_dir = platform.data_dir
        assert data_dir.exists()
    assert not data_dir.exists()
