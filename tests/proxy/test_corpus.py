import numpy as np
import pytest

from stablelab.data.corpus import BLOCK, load_corpus, split_blocks
from stablelab.errors import UsageError


def test_every_tenth_block_is_validation():
    data = np.arange(25 * BLOCK, dtype=np.int64) % 251
    train, val = split_blocks(data.astype(np.uint8))
    assert val.size == 2 * BLOCK  # blocks 9 and 19
    assert np.array_equal(val[:BLOCK], data[9 * BLOCK:10 * BLOCK].astype(np.uint8))
    assert train.size + val.size == data.size


def test_builtin_corpus_records_provenance():
    corpus = load_corpus()
    info = corpus.describe()
    assert info["source"] == "stdlib" and info["n_files"] > 100
    assert len(info["file_list_sha256"]) == 64
    assert corpus.train.size > 9 * corpus.validation.size * 0.9
    assert b"def " in corpus.train[:100_000].tobytes()


def test_user_folder_and_hash(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello world " * 2000)
    (tmp_path / "b.txt").write_bytes(b"another file " * 2000)
    first = load_corpus(str(tmp_path))
    (tmp_path / "c.txt").write_bytes(b"third " * 10)
    load_corpus.cache_clear()
    second = load_corpus(str(tmp_path))
    assert first.n_files == 2 and second.n_files == 3
    assert first.file_list_sha256 != second.file_list_sha256


def test_missing_and_tiny_corpus(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_corpus(str(tmp_path / "nope"))
    (tmp_path / "tiny.txt").write_bytes(b"x" * 100)
    with pytest.raises(UsageError, match="only 100 bytes"):
        load_corpus(str(tmp_path / "tiny.txt"))
