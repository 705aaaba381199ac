"""The hub code paths (nyu-mll/glue, corpus datasets) against a stand-in `datasets` module: no network here."""

import sys
import types

import pytest

from prunelab.data.corpus import read_hub_corpus
from prunelab.data.glue import get_task, load_task


class FakeRows:
    def __init__(self, columns: dict):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.columns[key]
        raise TypeError(key)

    def __iter__(self):
        n = len(next(iter(self.columns.values())))
        return iter({k: v[i] for k, v in self.columns.items()} for i in range(n))


@pytest.fixture
def fake_datasets(monkeypatch):
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "nyu-mll/glue" and config == "mnli":
            return FakeRows({"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [0, 2]})
        if name == "nyu-mll/glue" and config == "sst2":
            return FakeRows({"sentence": ["good", "bad"], "label": [1, 0], "idx": [0, 1]})
        if name == "wiki":
            return FakeRows({"text": [" = A = \n", "", "  some text  ", "more"]})
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_glue_from_the_hub_maps_columns_and_splits(fake_datasets):
    mnli = load_task(get_task("MNLI"), None)
    assert set(mnli) == {"train", "dev_matched", "dev_mismatched"}
    assert mnli["dev_matched"] == [("p1", "h1", 0), ("p2", "h2", 2)]
    assert ("nyu-mll/glue", "mnli", "validation_mismatched") in fake_datasets
    assert load_task(get_task("sst2"), None)["dev"] == [("good", None, 1), ("bad", None, 0)]
    with pytest.raises(ValueError, match="cannot load nyu-mll/glue rte train from the hub: no network; pass --data-dir"):
        load_task(get_task("rte"), None)


def test_corpus_from_the_hub(fake_datasets):
    assert read_hub_corpus("wiki:raw", "train") == ["= A =", "some text", "more"]
    assert fake_datasets[-1] == ("wiki", "raw", "train")
    with pytest.raises(ValueError, match="has no column 'body'; columns: text"):
        read_hub_corpus("wiki", column="body")
    with pytest.raises(ValueError, match="cannot load dataset 'other'"):
        read_hub_corpus("other")


def test_missing_datasets_package_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match=r"pip install 'prunelab\[datasets\]'"):
        read_hub_corpus("wiki")
    with pytest.raises(ValueError, match=r"pip install 'prunelab\[datasets\]'"):
        load_task(get_task("rte"), None)
