"""Records: ZsRE, flat and nested CounterFact, JSONL, directories, the shipped set, bad records, splits."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from hiedit_env import EditSet, RecordError, load_edits

ROME_RECORDS = [
    {
        "case_id": 0,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is",
            "subject": "Danielle Darrieux",
            "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": "French", "id": "Q150"},
        },
        "paraphrase_prompts": [
            "Where Danielle Darrieux is from, people speak the language of",
            "Danielle Darrieux was born in",
        ],
        "neighborhood_prompts": ["Michel Rocard is a native speaker of", "Jean Gabin spoke the language"],
    },
    {
        "case_id": 1,
        "requested_rewrite": {
            "prompt": "{} is affiliated with the religion of",
            "subject": "Edwin of Northumbria",
            "target_new": {"str": "Islam", "id": "Q432"},
            "target_true": {"str": "Christianity", "id": "Q5043"},
        },
        "paraphrase_prompts": ["Edwin of Northumbria follows the religion of"],
        "neighborhood_prompts": ["Christianity is the religion of Paul the Apostle, who follows"],
    },
]

FLAT_RECORDS = [
    {
        "case_id": i,
        "prompt": f"Prompt {i} of",
        "target_new": f"New{i}",
        "subject": f"S{i}",
        "ground_truth": f"Old{i}",
        "rephrase_prompt": f"Rephrased {i} of",
        "locality_prompt": f"Other {i} of",
        "locality_ground_truth": f"Loc{i}",
    }
    for i in range(5)
]

ZSRE_RECORDS = [
    {
        "subject": "UniFirst",
        "src": "What is the product made by UniFirst?",
        "pred": "uniform",
        "rephrase": "What will be the product of UniFirst?",
        "alt": "unmanned aircraft",
        "answers": ["uniform"],
        "loc": "nq question: who plays walter in the big lebowski",
        "loc_ans": "John Goodman",
    },
    {
        "subject": "Sicily",
        "src": "Which country is Sicily in?",
        "pred": "Italy",
        "rephrase": "Sicily is in which country?",
        "alt": "  Spain ",
        "answers": ["Italy"],
        "loc": "nq question: capital of norway",
        "loc_ans": " Oslo",
    },
    {
        "subject": "Oslo",
        "src": "Which country is Oslo in?",
        "pred": "Norway",
        "rephrase": "Oslo belongs to which country?",
        "alt": "Sweden",
        "answers": ["Norway"],
        "loc": "nq question: largest planet",
        "loc_ans": "Jupiter",
    },
]


def write_json(path: Path, rows: list[dict]) -> str:
    path.write_text(json.dumps(rows))
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_zsre_format_reads_every_field(tmp_path):
    edits = load_edits(write_json(tmp_path / "z.json", ZSRE_RECORDS))
    assert isinstance(edits, EditSet)
    assert edits.format == "zsre"
    assert len(edits) == 3 and edits.skipped == []
    first = edits.records[0]
    assert first.prompt == "What is the product made by UniFirst?"
    assert first.target_new == "unmanned aircraft"
    assert first.rephrase == "What will be the product of UniFirst?"
    assert first.loc_prompt == "nq question: who plays walter in the big lebowski"
    assert first.loc_answer == "John Goodman"
    assert first.target_true == "uniform"
    assert first.subject == "UniFirst"
    assert first.index == 0


def test_zsre_records_with_an_empty_alt_are_skipped_or_raise_naming_record_and_field(tmp_path):
    rows = [*ZSRE_RECORDS, {**ZSRE_RECORDS[0], "alt": ""}, {**ZSRE_RECORDS[2], "alt": " "}, ZSRE_RECORDS[1]]
    source = write_json(tmp_path / "z.json", rows)
    with pytest.warns(UserWarning, match=r"skipped 2 of 6 records.*record 3: field 'alt'"):
        edits = load_edits(source, on_error="skip")
    assert [i for i, _ in edits.skipped] == [3, 4]
    assert all("'alt'" in reason for _, reason in edits.skipped)
    # Records keep their position in the file after the skipped ones.
    assert [r.index for r in edits.records] == [0, 1, 2, 5]
    with pytest.raises(RecordError, match=r"record 3: field 'alt'"):
        load_edits(source, on_error="error")


def test_answers_with_leading_spaces_are_stripped(tmp_path):
    small = load_edits(write_json(tmp_path / "z.json", ZSRE_RECORDS))
    assert small.records[1].target_new == "Spain"
    assert small.records[1].loc_answer == "Oslo"


@pytest.mark.shared_data
def test_zsre_benchmark_file(zsre_path):
    with pytest.warns(UserWarning, match="skipped 2 of 1000"):
        edits = load_edits(zsre_path, on_error="skip")
    assert edits.format == "zsre"
    assert len(edits) == 998
    first = edits.records[0]
    assert first.prompt == "What is the product made by UniFirst?"
    assert first.target_new == "unmanned aircraft"
    assert first.rephrase == "What will be the product of UniFirst?"
    assert first.loc_prompt == "nq question: john goodman's character in the big lebowski"
    assert first.loc_answer == "Walter Sobchak"
    assert first.target_true == "uniform"
    assert first.subject == "UniFirst"
    assert {r.index: r for r in edits.records}[174].target_new == "Captain Universe"  # " Captain Universe" in the file
    for record in edits.records:
        for text in (record.prompt, record.target_new, record.rephrase, record.loc_prompt, record.loc_answer):
            assert text == text.strip()


@pytest.mark.shared_data
def test_zsre_benchmark_file_skips_its_two_empty_records_or_raises_naming_them(zsre_path):
    with pytest.warns(UserWarning, match=r"record 534: field 'alt'"):
        edits = load_edits(zsre_path, on_error="skip")
    assert [i for i, _ in edits.skipped] == [534, 723]
    assert all("'alt'" in reason for _, reason in edits.skipped)
    assert 534 not in {r.index for r in edits.records}
    assert edits.records[534].index == 535
    with pytest.raises(RecordError, match=r"record 534: field 'alt'"):
        load_edits(zsre_path, on_error="error")


@pytest.mark.shared_data
def test_counterfact_benchmark_file(counterfact_path):
    edits = load_edits(counterfact_path)
    assert edits.format == "counterfact"
    assert len(edits) == 1919
    assert edits.skipped == []
    first = edits.records[0]
    assert (first.prompt, first.target_new, first.target_true) == ("BBC One, by", "Sega", "BBC")
    assert first.rephrase == "BBC One is my favorite product out of everything owned by"
    assert (first.loc_prompt, first.loc_answer) == ("BBC Radio, by", "BBC")
    assert first.subject == "BBC One"


def test_counterfact_rome_nested_form(tmp_path):
    edits = load_edits(write_json(tmp_path / "rome.json", ROME_RECORDS))
    assert edits.format == "counterfact_rome"
    assert len(edits) == 2
    first = edits.records[0]
    assert first.prompt == "The mother tongue of Danielle Darrieux is"
    assert first.subject == "Danielle Darrieux"
    assert first.target_new == "English"
    assert first.target_true == "French"
    assert first.rephrase == "Where Danielle Darrieux is from, people speak the language of"
    assert first.loc_prompt == "Michel Rocard is a native speaker of"
    assert first.loc_answer == "French"
    assert edits.records[1].prompt == "Edwin of Northumbria is affiliated with the religion of"


def test_rome_template_without_placeholder_is_an_error(tmp_path):
    rows = json.loads(json.dumps(ROME_RECORDS))
    rows[1]["requested_rewrite"]["prompt"] = "A prompt without the subject slot"
    with pytest.raises(RecordError, match=r"record 1.*\{\}"):
        load_edits(write_json(tmp_path / "rome.json", rows), on_error="error")


def test_rome_form_runs_in_the_environment(make_env, tmp_path):
    env = make_env("test-tiny-llama", dataset=write_json(tmp_path / "rome.json", ROME_RECORDS), num_edits=2)
    env.reset(seed=0)
    n = len(env.unwrapped.candidate_modules)
    import numpy as np

    action = {"layers": np.ones(n, np.float32), "update": np.zeros(n, np.float32)}
    env.step(action)
    *_, terminated, _, info = env.step(action)
    assert terminated
    assert 0.0 <= info["episode_metrics"]["efficacy"] <= 1.0


def test_jsonl_file(tmp_path):
    edits = load_edits(write_jsonl(tmp_path / "cf.jsonl", FLAT_RECORDS))
    assert edits.format == "counterfact"
    assert [r.target_new for r in edits.records] == [f"New{i}" for i in range(5)]


def test_directory_source_reads_every_file(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_json(folder / "a.json", FLAT_RECORDS[:3])
    write_jsonl(folder / "b.jsonl", FLAT_RECORDS[3:])
    (folder / "notes.txt").write_text("not data")
    edits = load_edits(str(folder))
    assert edits.format == "counterfact"
    assert sorted(r.target_new for r in edits.records) == sorted(f"New{i}" for i in range(5))


def test_empty_directory_is_an_error(tmp_path):
    with pytest.raises(RecordError, match="no .json"):
        load_edits(str(tmp_path))


def test_default_shipped_set():
    path = Path(str(resources.files("hiedit_env") / "assets" / "default_edits.json"))
    assert path.is_file(), f"the shipped edit set {path} is missing"
    edits = load_edits("default")
    assert len(edits) == 60
    assert edits.format == "counterfact"
    assert edits.skipped == []
    first = edits.records[0]
    assert (first.prompt, first.target_new, first.target_true) == ("The capital of France is", "London", "Paris")
    assert first.rephrase == "The capital city of France is"
    assert (first.loc_prompt, first.loc_answer) == ("The capital of Austria is", "Vienna")
    assert (first.subject, first.index) == ("France", 0)
    for record in edits.records:
        for text in (
            record.prompt,
            record.target_new,
            record.rephrase,
            record.loc_prompt,
            record.loc_answer,
            record.target_true,
        ):
            assert text and text == text.strip()


def test_missing_field_raises_naming_index_and_field(tmp_path):
    rows = json.loads(json.dumps(ZSRE_RECORDS))
    del rows[1]["rephrase"]
    source = write_json(tmp_path / "bad.json", rows)
    with pytest.raises(RecordError, match=r"record 1: field 'rephrase'"):
        load_edits(source, on_error="error")


def test_missing_field_is_skipped_with_a_report(tmp_path):
    rows = json.loads(json.dumps(FLAT_RECORDS))
    rows[2]["locality_prompt"] = ""
    del rows[4]["target_new"]
    source = write_json(tmp_path / "bad.json", rows)
    with pytest.warns(UserWarning, match=r"skipped 2 of 5 records.*record 2.*locality_prompt"):
        edits = load_edits(source, on_error="skip")
    assert [r.index for r in edits.records] == [0, 1, 3]
    assert [i for i, _ in edits.skipped] == [2, 4]
    assert "locality_prompt" in edits.skipped[0][1]
    assert "target_new" in edits.skipped[1][1]


def test_all_records_bad_is_an_error(tmp_path):
    rows = [{**r, "target_new": ""} for r in FLAT_RECORDS]
    with pytest.warns(UserWarning), pytest.raises(RecordError, match="no usable record"):
        load_edits(write_json(tmp_path / "bad.json", rows), on_error="skip")


def test_unknown_format_is_an_error(tmp_path):
    source = write_json(tmp_path / "odd.json", [{"question": "q", "answer": "a"}])
    with pytest.raises(RecordError, match="cannot tell the format"):
        load_edits(source)


def test_nonexistent_path_is_an_error(tmp_path):
    with pytest.raises(RecordError, match="does not exist"):
        load_edits(str(tmp_path / "missing.json"))
    with pytest.raises(RecordError, match="does not exist"):
        load_edits("./no/such/edits.json")


def test_bad_on_error_value():
    with pytest.raises(ValueError, match="on_error"):
        load_edits("default", on_error="ignore")


def test_seeded_split_is_disjoint_and_reproducible():
    edits = load_edits("default")
    train = {r.index for r in edits.split("train", 0.2, seed=3)}
    test = {r.index for r in edits.split("test", 0.2, seed=3)}
    assert train.isdisjoint(test)
    assert train | test == {r.index for r in edits.records}
    assert (len(train), len(test)) == (48, 12)
    assert test == {r.index for r in edits.split("test", 0.2, seed=3)}
    assert train == {r.index for r in load_edits("default").split("train", 0.2, seed=3)}
    assert test != {r.index for r in edits.split("test", 0.2, seed=4)}
    assert len(edits.split("all")) == len(edits)


def test_bad_split_arguments():
    edits = load_edits("default")
    with pytest.raises(ValueError, match="split"):
        edits.split("validation")
    with pytest.raises(ValueError, match="test_fraction"):
        edits.split("test", 1.5)


def test_environment_split_uses_the_partition(make_env):
    train = make_env("test-tiny-gpt2", split="train", split_seed=1).unwrapped
    test = make_env("test-tiny-gpt2", split="test", split_seed=1).unwrapped
    assert (len(train.records), len(test.records)) == (48, 12)
    assert {r.index for r in train.records}.isdisjoint({r.index for r in test.records})
    test.reset(seed=0)
    assert {r.index for r in test.episode_records()} <= {r.index for r in test.records}


def test_unknown_hub_id_fails_offline_with_the_name():
    with pytest.raises(RecordError, match="no-such-org/no-such-dataset-xyz"):
        load_edits("no-such-org/no-such-dataset-xyz")
