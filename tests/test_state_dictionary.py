"""The tool that trains stored states' compression dictionary (tools/state_dictionary.py)."""

from __future__ import annotations

import hashlib
import logging
import zlib
from pathlib import Path

import pytest
import zstandard

from streams import state_codec
from streams.state_codec import ZSTD_LEVEL, decode_state, encode_state
from tools import state_dictionary


def test_the_shipped_dictionary_is_the_one_the_codec_checks() -> None:
    data = state_dictionary.DEFAULT_OUT.read_bytes()
    assert len(data) == state_dictionary.DEFAULT_SIZE
    assert hashlib.sha256(data).hexdigest() == state_codec._DICTIONARY_V3_SHA256
    assert Path(state_codec.__file__).with_name("state_v3.zdict") == state_dictionary.DEFAULT_OUT


def test_simulated_states_are_the_same_every_run_and_store_in_version_3() -> None:
    a, b = (state_dictionary.simulated_state(11, 15, partition=3) for _ in range(2))
    assert encode_state(a) == encode_state(b)
    assert encode_state(decode_state(encode_state(a))) == encode_state(a)
    assert a.book.patient_id == "patient-0000011" and a.positions == {3: a.positions[3]}


def test_training_gives_the_same_bytes_every_run_and_beats_zlib_on_other_seeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(state_dictionary, "TRAIN_PATIENTS", 120)
    monkeypatch.setattr(state_dictionary, "HELD_OUT_PATIENTS", 12)
    monkeypatch.setattr(state_dictionary, "_MINUTES", (5, 15))
    outs = [tmp_path / "a.zdict", tmp_path / "b.zdict"]
    with caplog.at_level(logging.INFO, logger=state_dictionary.__name__):
        for out in outs:
            assert state_dictionary.main(["--out", str(out), "--size", "4096"]) == 0
    a, b = (p.read_bytes() for p in outs)
    assert a == b and 0 < len(a) <= 4096
    assert "zlib level 1 (version 2)" in caplog.text and f"sha256 {hashlib.sha256(a).hexdigest()}" in caplog.text
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=zstandard.ZstdCompressionDict(a))
    held_out = [encode_state(state_dictionary.simulated_state(seed, 15), 1)[3:] for seed in (2_000_001, 2_000_002)]
    for tree in held_out:
        assert len(compressor.compress(tree)) < 0.6 * len(zlib.compress(tree, 1))
