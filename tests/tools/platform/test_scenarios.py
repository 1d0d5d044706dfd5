import httpx
import pytest

from opsagent.errors import InputError
from opsagent.tools.platform import inject_weight_mismatch


def test_same_seed_same_instances(platform):
    first = inject_weight_mismatch(platform, count=6, seed=42)
    assert inject_weight_mismatch(platform.base_urls, count=6, seed=42) == first
    other = inject_weight_mismatch(platform, count=6, seed=43)
    assert {e.entities["shipment_id"] for e in other} != {e.entities["shipment_id"] for e in first}


def test_planted_mismatch_is_real_in_both_systems(platform):
    planted = inject_weight_mismatch(platform, count=10, seed=5, suspect_share=0.3)
    assert sum(e.expected_status == "escalated" for e in planted) == 3
    assert len({e.entities["shipment_id"] for e in planted}) == 10
    with httpx.Client(timeout=5) as client:
        for exc in planted:
            sid = exc.entities["shipment_id"]
            assert sid.startswith("SHP-") and len(sid) == 10 and sid in exc.description
            wms = client.get(f"{platform.base_urls['wms']}/shipments/{sid}").json()
            tms = client.get(f"{platform.base_urls['tms']}/shipments/{sid}").json()
            assert 1.10 <= tms["billed_weight_kg"] / wms["scanned_weight_kg"] <= 1.85
            assert tms["declared_weight_kg"] == wms["scanned_weight_kg"]
            resolved = exc.expected_status == "resolved"
            assert wms["scale_check"] == ("passed" if resolved else "failed")
            assert exc.exception_type == "weight_mismatch"
            if resolved:
                assert exc.gold_tools == ["wms_get_shipment", "tms_get_shipment", "tms_open_weight_dispute"]
                claim = exc.gold_args["tms_open_weight_dispute"]["claimed_weight_kg"]
                assert claim == wms["scanned_weight_kg"]
            else:
                assert exc.gold_tools == ["wms_get_shipment", "tms_get_shipment"]


def test_descriptions_read_like_ops_notes(platform):
    planted = inject_weight_mismatch(platform, count=30, seed=11)
    texts = [e.description for e in planted]
    assert len(set(texts)) == 30
    assert len({" ".join(t.split()[:2]) for t in texts}) >= 5  # several wordings
    assert all(e.facts["carrier"] in t for e, t in zip(planted, texts, strict=True))


def test_bad_arguments(platform):
    with pytest.raises(InputError):
        inject_weight_mismatch(platform, count=1, seed=1, suspect_share=1.5)
    with pytest.raises(InputError):
        inject_weight_mismatch({"wms": platform.base_urls["wms"]}, count=1, seed=1)
