"""Every failure a user can cause in the CLI is one line on stderr and a non-zero exit, never a traceback
(``--debug`` keeps it): bad numbers at parse time, missing paths, bad devices, hostile or wrong
``--vector`` files, damaged manifests, a busy store, a full disk; leftover temporary files are
removed when a store is resumed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from hooked_mllm.cli import main
from hooked_mllm.concepts import Features
from hooked_mllm.concepts._store import folder_lock


def one_line(capsys) -> str:
    """The one line of stderr that is not a progress bar (no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, lines
    return lines[0]


EXTRACT = ["extract", "--model", "tiny:llava", "--hook", "blocks.0.hook_resid_post", "--n", "4"]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        ([*EXTRACT, "--out", "x", "--n", "-3"], "argument --n: -3 is not a whole number >= 1"),
        (["toy", "eval", "--n", "-1"], "argument --n: -1 is not a whole number >= 1"),
        (["toy", "eval", "--n", "many"], "argument --n: 'many' is not a whole number >= 1"),
        (["steer", "--target", "red", "--alpha", "nan"], "argument --alpha: nan is not a finite number"),
        (["steer", "--target", "red", "--alpha", "1", "inf"], "argument --alpha: inf is not a finite number"),
        (["toy", "train", "--lr", "0"], "argument --lr: 0 is not a finite number > 0"),
        (["concepts", "--features", "f", "--out", "o", "--k", "0"], "argument --k: 0 is not"),
    ],
)
def test_invalid_numbers_are_refused_at_parse_time(capsys, argv, said):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert said in one_line(capsys)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["hooks", "--model", "/no/such/checkpoint"], "No checkpoint folder at /no/such/checkpoint"),
        (["hooks", "--model", "./no-such-checkpoint"], "No checkpoint folder at ./no-such-checkpoint"),
        (["toy", "eval", "--n", "1", "--path", "/no/such/dir"], "No checkpoint folder at /no/such/dir"),
        (["toy", "science", "--n", "1", "--path", "/no/such/dir"], "No checkpoint folder at /no/such/dir"),
        ([*EXTRACT, "--out", "OUT", "--device", "bogus"], "--device 'bogus' is not a device"),
        ([*EXTRACT, "--out", "OUT", "--device", "cuda:99"], "--device cuda:99"),
    ],
)
def test_missing_paths_and_bad_devices_are_one_line(capsys, tmp_path, argv, said):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    line = one_line(capsys)
    assert said in line and "--debug" in line


def test_debug_keeps_the_traceback():
    with pytest.raises(FileNotFoundError, match="No checkpoint folder"):
        main(["--debug", "hooks", "--model", "/no/such/checkpoint"])


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


@pytest.mark.parametrize("kind", ["missing", "random bytes", "pickle", "dict", "2-D", "nan"])
def test_steer_vector_files_other_than_one_vector_are_refused(capsys, tmp_path, kind):
    file = tmp_path / "vector.pt"
    marker = tmp_path / "ran"
    if kind == "random bytes":
        file.write_bytes(bytes(range(256)) * 4)
    elif kind == "pickle":
        file.write_bytes(pickle.dumps(_Payload(marker)))
    elif kind == "dict":
        torch.save({"vector": torch.ones(8)}, file)
    elif kind == "2-D":
        torch.save(torch.ones(2, 8), file)
    elif kind == "nan":
        torch.save(torch.tensor([1.0, float("nan")]), file)
    assert main(["steer", "--target", "red", "--vector", str(file)]) == 2
    line = one_line(capsys)
    assert str(file) in line
    assert not marker.exists()


def test_steer_vector_loads_torch_and_safetensors_vectors(tmp_path):
    from safetensors.torch import save_file

    from hooked_mllm.concepts.cli import load_vector

    vector = torch.randn(8)
    torch.save(vector, tmp_path / "v.pt")
    save_file({"vector": vector}, tmp_path / "v.safetensors")
    assert torch.equal(load_vector(tmp_path / "v.pt"), vector)
    assert torch.equal(load_vector(tmp_path / "v.safetensors"), vector)


@pytest.fixture
def store(tmp_path) -> Path:
    out = tmp_path / "store"
    assert main([*EXTRACT, "--batch-size", "2", "--shard-size", "2", "--out", str(out)]) == 0
    return out


def test_damaged_manifest_and_duplicate_ids_are_named(capsys, store, tmp_path):
    capsys.readouterr()  # the store's own extraction
    manifest = store / "manifest.json"
    good = json.loads(manifest.read_text())
    duplicated = dict(good, shards=[good["shards"][0], dict(good["shards"][1], ids=good["shards"][0]["ids"])])
    manifest.write_text(json.dumps(duplicated))
    with pytest.raises(ValueError, match=f"{manifest} lists sample id '{good['shards'][0]['ids'][0]}' twice"):
        Features.load(store, verify=False)
    manifest.write_text(json.dumps(good)[:-20])
    argv = ["concepts", "--features", str(store), "--out", str(tmp_path / "c.npz"), "--method", "pca"]
    assert main(argv) == 2
    assert f"{manifest} is damaged (not JSON" in one_line(capsys)
    assert main([*EXTRACT, "--out", str(store)]) == 2  # a resume names it too
    assert f"{manifest} is damaged" in one_line(capsys)


def test_busy_store_and_full_disk_are_one_line_and_the_store_stays_whole(capsys, store, monkeypatch):
    capsys.readouterr()  # the store's own extraction
    with folder_lock(store):
        assert main([*EXTRACT, "--out", str(store)]) == 2
    assert "is being written by another extraction" in one_line(capsys)

    from safetensors import SafetensorError

    import hooked_mllm.concepts._shards as shards

    def full(arrays, file):
        Path(file).write_bytes(b"\0" * 10)  # what a full disk leaves of a half-written file
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr(shards, "save_file", full)
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    assert main([*EXTRACT[:-1], "8", "--batch-size", "2", "--shard-size", "2", "--out", str(store)]) == 2
    line = one_line(capsys)
    assert "No space left on device" in line and "shard_00002.safetensors" in line
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before  # nothing half-written is left
    assert len(Features.load(store)) == 4


def test_leftover_temporary_files_are_removed_on_resume(store):
    leftovers = [".manifest.json.ab12cd_9", ".shard_00007.safetensors.zz99yy00"]
    for name in leftovers:
        (store / name).write_text("half")
    (store / "notes.txt").write_text("mine")
    assert main([*EXTRACT, "--out", str(store)]) == 0
    assert not any((store / name).exists() for name in leftovers)
    assert (store / "notes.txt").read_text() == "mine" and len(Features.load(store)) == 4
