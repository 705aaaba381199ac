import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from glue_fixtures import FOLDERS, glue_dir  # noqa: F401 (fixture)
from prunelab.data.glue import TASKS, compute_metrics, get_task, load_task, read_split


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_task_format_reads(glue_dir, folder):  # noqa: F811
    task = get_task(folder)
    splits = load_task(task, glue_dir)
    assert set(splits) == {"train", *task.dev_splits}
    assert len(splits["train"]) == 16 and all(len(splits[d]) == 8 for d in task.dev_splits)
    a, b, label = splits["train"][1]
    assert a.startswith("w") and (b is None) == (folder in ("CoLA", "SST-2"))
    if task.is_regression:
        assert label == pytest.approx(0.8)
    else:
        assert label in range(task.num_labels)
        assert len({row[2] for row in splits["train"]}) == task.num_labels  # every class seen


def test_labels_follow_the_hub_order(glue_dir):  # noqa: F811
    mnli = read_split(glue_dir, get_task("MNLI"), "dev_matched")
    assert [row[2] for row in mnli[:3]] == [0, 1, 2]  # entailment, neutral, contradiction
    cola = read_split(glue_dir, get_task("cola"), "train")
    assert [row[2] for row in cola[:2]] == [0, 1]


@pytest.mark.parametrize("name, short", [("SST-2", "sst2"), ("sst2", "sst2"), ("STS-B", "stsb"), ("stsb", "stsb"),
                                         ("CoLA", "cola"), ("MNLI", "mnli"), ("qnli", "qnli"), ("Rte", "rte")])
def test_task_names_are_case_insensitive(name, short):
    assert get_task(name).name == short


def test_unknown_task():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'sst'; allowed: CoLA, SST-2, MRPC"):
        get_task("sst")


def test_malformed_files_name_file_and_line(glue_dir):  # noqa: F811
    path = glue_dir / "RTE" / "train.tsv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3] + "\textra"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"RTE/train.tsv:4: expected 4 tab-separated columns, found 5"):
        read_split(glue_dir, get_task("rte"), "train")
    lines[3] = "3\ta\tb\tmaybe"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"RTE/train.tsv:4: label 'maybe' is not one of entailment, not_entailment"):
        read_split(glue_dir, get_task("rte"), "train")
    sts = glue_dir / "STS-B" / "dev.tsv"
    sts.write_text(sts.read_text().replace("0.000\n", "high\n", 1))
    with pytest.raises(ValueError, match=r"STS-B/dev.tsv:2: score 'high' is not a number"):
        read_split(glue_dir, get_task("stsb"), "dev")
    with pytest.raises(FileNotFoundError, match="QQP/dev.tsv not found"):
        (glue_dir / "QQP" / "dev.tsv").unlink()
        read_split(glue_dir, get_task("qqp"), "dev")


def test_metrics_against_hand_computed_values():
    logits = np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])  # predicts 1, 1, 0, 0
    labels = np.array([1, 0, 0, 0])
    mrpc = compute_metrics(TASKS["mrpc"], logits, labels)
    assert mrpc["accuracy"] == pytest.approx(0.75) and mrpc["f1"] == pytest.approx(2 / 3)
    assert mrpc["score"] == pytest.approx((0.75 + 2 / 3) / 2)
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (1*2 - 1*0) / sqrt(2*1*3*2)
    assert compute_metrics(TASKS["cola"], logits, labels)["matthews_correlation"] == pytest.approx(2 / np.sqrt(12))
    predictions, gold = np.array([[0.5], [1.0], [3.5], [2.0]]), np.array([0.0, 1.5, 4.0, 3.0])
    sts = compute_metrics(TASKS["stsb"], predictions, gold)
    assert sts["pearson"] == pytest.approx(pearsonr(predictions[:, 0], gold)[0])
    assert sts["spearman"] == pytest.approx(spearmanr(predictions[:, 0], gold)[0]) == pytest.approx(1.0)
    assert compute_metrics(TASKS["cola"], np.zeros((4, 2)), labels)["matthews_correlation"] == 0.0  # constant guess
