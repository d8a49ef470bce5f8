"""Output folders: one dartboard process at a time writes one (`checks.folder_held`): a second search or training in
the folder of one that runs is refused by name before any work, and a holder that dies leaves no stale lock. A new
search does not replace the genotype of a network trained in its folder."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_bad_input import listing, refused_here

from dartboard.errors import UserInputError
from dartboard.platform.checks import folder_held

BUSY = "is in use by another dartboard process (a search or a training writing there)"


class Holder:
    """The lock a running search or training holds on its folder, taken by the test (its own open file)."""

    def __init__(self, folder: Path):
        self.fd = os.open(folder, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        os.close(self.fd)


@pytest.mark.parametrize("args", [
    ["search", "--out", "busy", "--epochs", "1", "--no-mlflow"],
    ["train", "darts-v2", "--out", "busy", "--epochs", "1", "--no-mlflow"],
], ids=["search", "train"])
def test_a_second_process_in_a_held_folder_is_refused_before_any_work(args, tmp_path, capsys, monkeypatch):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "weights.safetensors").write_bytes(b"the first training's")
    holder = Holder(busy)
    try:
        line = refused_here(args, tmp_path, capsys, monkeypatch)  # nothing written, nothing removed
    finally:
        holder.release()
    assert line == f"error: --out: 'busy' {BUSY}; wait for it to end, or give another --out"
    assert (busy / "weights.safetensors").read_bytes() == b"the first training's"


def test_the_folder_is_held_while_in_use_and_free_after(tmp_path):
    out = tmp_path / "runs" / "one"
    with folder_held(out, "--out"):
        assert out.is_dir()
        with pytest.raises(UserInputError, match=f"--out: '.*one' {re.escape(BUSY)}"), folder_held(out, "--out"):
            pass
        (out / "genotype.json").write_text("{}")
    with folder_held(out, "--out"):  # released by the first holder
        pass
    assert (out / "genotype.json").is_file()


def test_a_folder_made_for_nothing_is_removed_again(tmp_path):
    with pytest.raises(RuntimeError), folder_held(tmp_path / "a" / "b", "--out"):
        raise RuntimeError("refused by a later check")
    assert listing(tmp_path) == set()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time\nfrom dartboard.platform.checks import folder_held\n"
            "with folder_held(sys.argv[1], '--out'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UserInputError, match=re.escape(BUSY)), folder_held(out, "--out"):
            pass
    finally:
        proc.kill()
        proc.wait()
    with folder_held(out, "--out"):  # the kernel released the dead holder's lock
        pass


def test_a_file_system_without_locks_is_used_unlocked(tmp_path, monkeypatch):
    import errno

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with folder_held(tmp_path / "on-a-mount", "--out"):
        (tmp_path / "on-a-mount" / "genotype.json").write_text("{}")
    assert (tmp_path / "on-a-mount" / "genotype.json").is_file()


def test_a_search_into_a_trained_networks_folder_is_refused_and_a_finished_search_replaced(tmp_path, capsys,
                                                                                            monkeypatch, caplog):
    from test_cli_contract import run_main

    from dartboard.spaces import genotype as gt
    from dartboard.spaces.catalog import resolve

    trained = tmp_path / "run"
    gt.save(resolve("darts-v1"), trained / "genotype.json")
    (trained / "weights.safetensors").write_bytes(b"the network's weights")
    line = refused_here(["search", "--out", "run", "--epochs", "1", "--no-mlflow"], tmp_path, capsys, monkeypatch)
    assert line == ("error: --out: 'run' holds a network trained from its genotype.json (weights.safetensors); a new "
                    "search would replace the genotype under those weights: give another --out")
    assert gt.load(trained / "genotype.json") == resolve("darts-v1")
    finished = tmp_path / "finished"
    gt.save(resolve("darts-v1"), finished / "genotype.json")
    code, _, err = run_main(["search", "--out", str(finished), "--epochs", "1", "--set", "C=4", "--set", "layers=2",
                             "--no-mlflow"], capsys)
    assert code == 0, err[-3000:]
    assert f"search: {finished} holds a finished search; its files are replaced by this one's" in caplog.text
    assert (finished / "history.json").is_file()


@pytest.mark.parametrize("there", ["darts-v2", "not json"], ids=["another-genotype", "unreadable"])
def test_a_training_into_a_folder_of_another_genotype_is_refused(there, tmp_path, capsys, monkeypatch):
    """Training writes its genotype to OUT/genotype.json: a search's result there would be lost."""
    from dartboard.spaces import genotype as gt
    from dartboard.spaces.catalog import resolve

    folder = tmp_path / "search"
    folder.mkdir()
    if there == "not json":
        (folder / "genotype.json").write_text("not json")
    else:
        gt.save(resolve(there), folder / "genotype.json")
    before = (folder / "genotype.json").read_bytes()
    line = refused_here(["train", "darts-v1", "--out", "search", "--epochs", "1", "--no-mlflow"], tmp_path, capsys,
                        monkeypatch)
    assert line == ("error: --out: 'search' holds another genotype (genotype.json), which training 'darts-v1' there "
                    "would replace: give another --out")
    assert (folder / "genotype.json").read_bytes() == before
