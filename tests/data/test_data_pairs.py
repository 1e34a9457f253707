"""Pairs as data: seq2seq, completion and chat records assembled with a loss mask; every bad record an error naming
its line and field, leaving nothing; padded, checkpointable batches; the built-in dates task."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from support import byte_level_tokenizer
from mulm_jax.config import DataConfig
from mulm_jax.data import DataError, Tokenizer, assemble
from mulm_jax.data.loader import batch_shapes, load_pairs, make_loader
from mulm_jax.data.tasks import TASKS, date_pairs
from mulm_jax.data.tokenizer import CharTokenizer

SEQ2SEQ = [{"source": f"{n} apples", "target": f"{n} pommes"} for n in range(40)]
COMPLETION = [{"prompt": f"Q: {n}+1? A:", "completion": f" {n + 1}"} for n in range(20)]
CHAT = [
    {
        "messages": [
            {"role": "user", "content": f"hi {n}"},
            {"role": "assistant", "content": f"hello {n}"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ciao"},
        ]
    }
    for n in range(20)
]


def jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def config(tmp_path: Path, *sources: Path | str, **settings) -> DataConfig:
    return DataConfig(sources=tuple(map(str, sources)), out_dir=str(tmp_path / "out"), **settings)


def examples(result, split: str = "train") -> list[tuple[str, str]]:
    """Each example's untrained and trained text (the end token shown as |)."""
    tok, arrays = Tokenizer.load(result.path), load_pairs(result.path, split)
    shown = lambda ids: "".join("|" if i == tok.eos_id else tok.decode([i]) for i in ids)  # noqa: E731
    return [(shown(ids[~mask]), shown(ids[mask])) for ids, mask in map(arrays.example, range(arrays.count))]


def test_seq2seq_pairs_hold_source_then_target_and_its_end_with_the_target_masked(tmp_path):
    result = assemble(config(tmp_path, jsonl(tmp_path / "p.jsonl", SEQ2SEQ), val_fraction=0.2))
    m = result.manifest
    assert (m["kind"], m["pairs"]["fields"], m["pairs"]["files"]) == ("seq2seq", ["source", "target"], ["p.jsonl"])
    assert (m["pairs"]["train_examples"], m["pairs"]["val_examples"]) == (32, 8)
    assert m["pairs"]["decoder_start_id"] == Tokenizer.load(result.path).eos_id
    pairs = examples(result) + examples(result, "val")
    assert sorted(pairs) == sorted((r["source"], r["target"] + "|") for r in SEQ2SEQ)


def test_completion_pairs_train_on_the_completion_and_its_end_only(tmp_path):
    result = assemble(config(tmp_path, jsonl(tmp_path / "c.jsonl", COMPLETION), val_fraction=0))
    assert result.manifest["kind"] == "completion"
    assert sorted(examples(result)) == sorted((r["prompt"], r["completion"] + "|") for r in COMPLETION)
    assert result.manifest["pairs"]["train_loss_tokens"] == sum(len(r["completion"]) + 1 for r in COMPLETION)


def test_chat_pairs_render_through_the_template_and_train_on_each_assistant_turn(tmp_path):
    result = assemble(config(tmp_path, jsonl(tmp_path / "chat.jsonl", CHAT[:1]), val_fraction=0))
    arrays, tok = load_pairs(result.path, "train"), Tokenizer.load(result.path)
    ids, mask = arrays.example(0)
    pieces = ["|" if i == tok.eos_id else tok.decode([i]) for i in ids]  # the end token as |
    runs = [
        (bool(m), "".join(p for _, p in run)) for m, run in itertools.groupby(zip(mask, pieces), key=lambda mp: mp[0])
    ]
    assert runs == [
        (False, "user: hi 0\nassistant:"),
        (True, " hello 0\n|"),
        (False, "user: bye\nassistant:"),
        (True, " ciao\n|"),
    ]
    assert result.manifest["chat_template"]


def test_dedup_drops_repeated_whole_pairs_not_shared_sources(tmp_path):
    records = [{"source": "a", "target": "x"}, {"source": "a", "target": "y"}, {"source": "a", "target": "x"}]
    result = assemble(config(tmp_path, jsonl(tmp_path / "d.jsonl", records), val_fraction=0, dedup="exact"))
    assert result.manifest["documents"]["removed"] == {"exact_duplicate": 1}
    assert sorted(examples(result)) == [("a", "x|"), ("a", "y|")]


@pytest.mark.parametrize(
    "record, message",
    [
        (
            {"source": "a"},
            r"bad.jsonl:2: no 'target' field \(a seq2seq record has 'source' and 'target'; found: source\)",
        ),
        ({"source": "a", "target": " \n"}, r"bad.jsonl:2: field 'target' is empty"),
        ({"source": "a", "target": 3}, r"bad.jsonl:2: field 'target' is a int, expected a string"),
        (["a", "b"], r"bad.jsonl:2: a seq2seq record is a JSON object"),
    ],
)
def test_a_bad_pair_is_an_error_naming_its_line_and_field_and_nothing_is_written(tmp_path, record, message):
    path = jsonl(tmp_path / "bad.jsonl", [SEQ2SEQ[0], record])
    with pytest.raises(DataError, match=message):
        assemble(config(tmp_path, path))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "messages, message",
    [
        (
            [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
            r"chat.jsonl:2: field 'messages\[1\].role' is 'bot': expected one of system, user, assistant",
        ),
        ([{"role": "user", "content": "a"}], r"chat.jsonl:2: field 'messages' has no assistant message"),
        ([{"role": "user"}], r"chat.jsonl:2: field 'messages\[0\]' is not a \{\"role\", \"content\"\} object"),
        ([], r"chat.jsonl:2: field 'messages' is empty"),
    ],
)
def test_a_bad_chat_message_is_an_error_naming_its_line_and_field(tmp_path, messages, message):
    path = jsonl(tmp_path / "chat.jsonl", [CHAT[0], {"messages": messages}])
    with pytest.raises(DataError, match=message):
        assemble(config(tmp_path, path))
    assert not (tmp_path / "out").exists()


def test_a_source_longer_than_seq_len_is_an_error_naming_its_line_and_field(tmp_path):
    records = SEQ2SEQ[:5] + [{"source": "x" * 40, "target": "y"}]
    with pytest.raises(
        DataError,
        match=r"long.jsonl:6: field 'source' has 40 tokens, more than the encoder's 16 "
        r"\(data.seq_len\)",
    ):
        assemble(config(tmp_path, jsonl(tmp_path / "long.jsonl", records), seq_len=16, val_fraction=0))
    assert not (tmp_path / "out").exists()


def test_text_and_pairs_do_not_mix_in_one_data_set(tmp_path):
    (tmp_path / "t.txt").write_text("some text\n")
    with pytest.raises(DataError, match=r"holds seq2seq pairs \('source' and 'target'\) and .*t.txt holds text"):
        assemble(config(tmp_path, jsonl(tmp_path / "p.jsonl", SEQ2SEQ), tmp_path / "t.txt"))


@pytest.fixture(scope="module")
def seq2seq_set(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairs")
    return assemble(config(tmp, jsonl(tmp / "p.jsonl", SEQ2SEQ), val_fraction=0.2)).path


def test_decoder_batches_read_each_example_whole_with_the_prompt_masked(seq2seq_set):
    batch = next(make_loader(seq2seq_set, "train", 4, 20, seed=0, num_threads=0))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == dict(batch_shapes({"kind": "seq2seq"}, 4, 20).items())
    tok = Tokenizer.load(seq2seq_set)
    for inputs, targets, mask in zip(batch["inputs"], batch["targets"], batch["loss_mask"]):
        inside = mask[:-1] & mask[1:]
        np.testing.assert_array_equal(inputs[1:][inside], targets[:-1][inside])  # the same sequence, shifted
        trained = tok.decode(targets[mask])
        assert trained.endswith("pommes") and targets[mask][-1] == tok.eos_id
        assert tok.decode(inputs[: int(np.argmax(mask)) + 1]).endswith("apples")


def test_encoder_decoder_batches_hold_the_source_and_the_target_after_the_start_token(seq2seq_set):
    batch = next(make_loader(seq2seq_set, "train", 4, 12, seed=0, num_threads=0, source_len=16))
    assert {k: v.shape for k, v in batch.items()} == {
        k: s for k, (s, _) in batch_shapes({"kind": "seq2seq"}, 4, 12, 16).items()
    }
    tok = Tokenizer.load(seq2seq_set)
    for b in range(4):
        source = tok.decode(batch["source"][b][batch["source_valid"][b]])
        target = batch["targets"][b][batch["loss_mask"][b]]
        assert source.endswith(" apples") and tok.decode(target) == source.replace("apples", "pommes")
        assert batch["inputs"][b][0] == tok.eos_id and target[-1] == tok.eos_id
        np.testing.assert_array_equal(batch["inputs"][b][1 : len(target)], target[:-1])


def test_pair_batches_resume_exactly_from_a_saved_state(seq2seq_set):
    it = make_loader(seq2seq_set, "train", 3, 20, seed=1, num_threads=0)
    [next(it) for _ in range(5)]
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    again = make_loader(seq2seq_set, "train", 3, 20, seed=1, num_threads=0)
    again.set_state(state)
    for want, got in zip(expected, [next(again) for _ in range(4)]):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])


def test_an_example_longer_than_the_rows_is_refused_naming_its_line(seq2seq_set):
    with pytest.raises(
        DataError,
        match=r"p.jsonl:\d+: field 'target' has \d+ tokens with its end token, more than "
        r"the decoder's 4 \(seq_len\)",
    ):
        make_loader(seq2seq_set, "train", 2, 4, seed=0, source_len=16)


def test_the_dates_task_is_a_pure_function_of_its_seed_with_held_out_dates_never_trained_on():
    train, held_out = date_pairs(0, train=2000, held_out=200)
    assert (train, held_out) == date_pairs(0, train=2000, held_out=200)
    assert date_pairs(1, train=2000, held_out=200) != (train, held_out)
    assert not {t for _, t in train} & {t for _, t in held_out}
    assert all(len(t) == 10 and t[4] == t[7] == "-" for _, t in train + held_out)
    assert TASKS["dates"].fingerprint() == TASKS["dates"].fingerprint()


def test_the_dates_task_assembles_as_a_named_source(tmp_path):
    m = assemble(config(tmp_path, "dates")).manifest
    assert (m["kind"], m["pairs"]["val_examples"], m["sources"][0]["task"]) == ("seq2seq", 1000, "dates")
    assert m["pairs"]["longest"]["val"]["untrained"] <= 29 and m["pairs"]["longest"]["val"]["trained"] == 11


def test_chat_renders_through_the_tokenizer_folders_own_template_and_keeps_its_end_token(tmp_path):
    byte_level_tokenizer(tmp_path / "model")  # a Hugging Face tokenizer with a chat template ending turns in eos
    result = assemble(
        config(tmp_path, jsonl(tmp_path / "chat.jsonl", CHAT[:2]), tokenizer=str(tmp_path / "model"), val_fraction=0)
    )
    tok = Tokenizer.load(result.path)
    ids, mask = load_pairs(result.path, "train").example(0)
    trained = [tok.decode(ids[start:end]) for start, end in _runs(mask, True)]
    read = [tok.decode(ids[start:end]) for start, end in _runs(mask, False)]
    assert trained == ["hello 0\n", "ciao\n"]  # as the template writes a reply: its end token, then a newline
    assert read == ["<|user|>\nhi 0\n<|assistant|>\n", "<|user|>\nbye\n<|assistant|>\n"]
    assert ids[0] == tok.bos_id  # once: the template writes it, the tokenizer adds no other
    assert [list(ids[start:end]).count(tok.eos_id) for start, end in _runs(mask, True)] == [1, 1]  # none added


def _runs(mask: np.ndarray, value: bool) -> list[tuple[int, int]]:
    """(start, end) of each run of `value` in a loss mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], mask == value, [False]]).astype(int)))
    return list(zip(edges[::2], edges[1::2]))


def test_a_character_the_given_tokenizer_lacks_is_an_error_naming_the_pair(tmp_path):
    CharTokenizer(sorted(set("0123456789 applespomm")), eos=True).save(tmp_path)
    records = SEQ2SEQ[:3] + [{"source": "7 apples", "target": "7 poires"}]
    with pytest.raises(DataError, match=r"p.jsonl:4: character 'i' is not in the char vocabulary"):
        assemble(config(tmp_path, jsonl(tmp_path / "p.jsonl", records), tokenizer=str(tmp_path)))
    assert not (tmp_path / "out").exists()
