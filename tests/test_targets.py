"""Target profiles: the shipped ones validate; bad ones are refused with the valid choices listed."""

from __future__ import annotations

import pytest

from metaedge.targets import TargetError, TargetProfile, get_target, list_targets

REQUIRED = {"x86-cpu", "x86-cuda", "jetson-orin-nano", "jetson-agx-orin", "raspberry-pi-5"}


def test_shipped_profiles():
    profiles = list_targets()
    assert REQUIRED <= set(profiles)
    orin = get_target("jetson-orin-nano")
    assert orin.cuda_architectures == ("87",) and orin.tensorrt["fp16"] is True
    assert get_target("jetson-agx-orin").cuda_architectures == ("87",)
    assert get_target("raspberry-pi-5").tensorrt is None
    assert get_target("raspberry-pi-5").onnxruntime_providers == ("CPUExecutionProvider",)


def test_unknown_target_lists_valid_ones():
    with pytest.raises(TargetError, match="valid targets: .*jetson-orin-nano"):
        get_target("jetson-nano-2015")


@pytest.mark.parametrize(
    "change, message",
    [({"colour": "red"}, "unknown keys \\['colour'\\]"), ({"precision": "fp8"}, "precision"),
     ({"onnxruntime_providers": ["MagicExecutionProvider"]}, "execution provider"), ({"max_batch": 0}, "max_batch"),
     ({"tensorrt": {"workspace_mib": 1}}, "tensorrt settings")],
)  # fmt: skip
def test_invalid_profiles_are_refused(change, message):
    good = get_target("x86-cuda").to_dict()
    with pytest.raises(TargetError, match=message):
        TargetProfile.from_dict({**good, **change})
    missing = dict(good)
    del missing["threads"]
    with pytest.raises(TargetError, match="missing keys \\['threads'\\]"):
        TargetProfile.from_dict(missing)


@pytest.mark.parametrize("width, terminal", [(80, True), (80, False), (60, True), (120, True)])
def test_table_never_cuts_a_target_name(width, terminal):
    import io

    from rich.console import Console

    from metaedge.targets import targets_table

    profiles = list_targets()
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=terminal, color_system=None).print(targets_table(profiles))
    lines = out.getvalue().splitlines()
    assert "…" not in out.getvalue()
    assert max(len(line) for line in lines) <= width
    words = " ".join(lines).split()
    for name, p in profiles.items():
        assert sum(line.split()[:1] == [name] for line in lines) == 1, name  # whole, at the start of its row
        assert " ".join(p.description.split()) in " ".join(words)  # the description wraps, all of it there
