"""train.evaluate losses and prompt ablation on a set where the caption determines the audio: four
captions, each naming one of four deterministic clips (a low sine, a square wave, silence, seeded
noise), encoded by the default codec. A tiny model trained in this process on the true pairs must
show a positive t2a conditioning gap whose interval excludes 0; one trained on captions shuffled
across samples (each caption paired equally often with every clip, so the caption carries nothing)
must get a gap whose interval includes 0, and be flagged.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from train.evaluate.ablation import NO_PROMPT_USE, derangement, prompt_of, retrieval_credit, with_prompt
from train.evaluate.losses import read_samples
from train.evaluate.scoring import conditional_dependence, task_losses
from train.evaluate.stats import bootstrap_mean, bootstrap_mean_difference
from train.model import PackedLM, build_model, token_losses
from train.sequences import Specials, build_doc, collate, pack_row
from train_helpers import tone_dataset

STEPS = 60


@pytest.fixture(scope="module")
def data(tmp_path_factory, default_tokenizer):
    return tone_dataset(tmp_path_factory.mktemp("eval-tones") / "OUT", default_tokenizer)


def fit(samples, space, *, steps: int = STEPS) -> PackedLM:
    """A tiny model trained with the project's loss on every sample's t2a and a2t doc, one full batch a step."""
    sp = Specials.from_space(space)
    docs = [s.doc(t, sp) for s in samples for t in ("t2a", "a2t")]
    width = max(len(d) for d in docs)
    rows = [pack_row([d], seq_len=width, pad_id=sp.pad) for d in docs]
    batch = {k: torch.as_tensor(v) for k, v in collate(rows).items()}
    model = PackedLM(build_model("tiny", space, seed=0, seq_len=width)[0])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        ce, _ = token_losses(model, batch["input_ids"], batch["position_ids"], batch["targets"], space.vocab_size)
        opt.zero_grad()
        ce.mean().backward()
        opt.step()
    return model.eval()


def shuffled(samples):
    """Captions moved across samples so that each caption is paired once with each clip."""
    by_clip = [[s for s in samples if f"-{c}-" in s.id] for c in range(4)]
    caption = {c: next(s.caption for s in by_clip[c]) for c in range(4)}
    return [replace(s, caption=caption[(c + j) % 4]) for c in range(4) for j, s in enumerate(by_clip[c])]


@pytest.fixture(scope="module")
def models(data, default_space):
    train = read_samples([data], "train", default_space).samples
    torch.manual_seed(0)
    return {"true": fit(train, default_space), "shuffled": fit(shuffled(train), default_space)}


@pytest.fixture(scope="module")
def val(data, default_space):
    return read_samples([data], "val", default_space).samples


@pytest.fixture(scope="module")
def ablations(models, val, default_space):
    return {name: conditional_dependence(m, val, default_space, tasks=("t2a", "a2t"), seed=0)
            for name, m in models.items()}


# ---- the ablation verdicts ----------------------------------------------------------------------------
def test_the_true_pair_model_uses_its_prompt(ablations):
    dep = ablations["true"]["t2a"]
    print(f"true t2a: gap {dep.gap} empty-own {dep.empty_gap} retrieval {dep.retrieval}")
    print(f"true a2t: gap {ablations['true']['a2t'].gap} retrieval {ablations['true']['a2t'].retrieval}")
    assert dep.gap.low > 0 and dep.uses_prompt and dep.flag is None
    assert dep.empty_gap.mean > 0
    assert dep.retrieval.k == 10 and dep.retrieval.note is None
    assert dep.retrieval.accuracy > 2 * dep.retrieval.chance


def test_the_shuffled_control_is_flagged(ablations):
    dep = ablations["shuffled"]["t2a"]
    print(f"shuffled t2a: gap {dep.gap} empty-own {dep.empty_gap} retrieval {dep.retrieval}")
    assert dep.gap.includes(0.0) and not dep.uses_prompt and dep.flag == NO_PROMPT_USE
    assert abs(dep.gap.mean) < ablations["true"]["t2a"].gap.mean / 10


def test_retrieval_k_shrinks_with_a_small_split_and_says_so(models, val, default_space):
    dep = conditional_dependence(models["true"], val[:5], default_space, tasks=("t2a",), k=10)["t2a"]
    assert dep.retrieval.k == 5 and dep.retrieval.chance == pytest.approx(0.2) and "K=5" in dep.retrieval.note


def test_task_losses_score_every_sample_on_every_task_its_modality_serves(models, val, default_space):
    losses = task_losses(models["true"], val, default_space)
    assert set(losses) == {"a2t", "t2a", "text"}
    assert all(t.n_samples == len(val) and t.low <= t.mean <= t.high for t in losses.values())
    sp = Specials.from_space(default_space)
    # every target token is scored (<bos> never is one)
    assert losses["t2a"].n_tokens == len(val) * int(val[0].doc("t2a", sp).targets.sum())
    print({t: (round(v.mean, 3), round(v.low, 3), round(v.high, 3)) for t, v in losses.items()})


# ---- the pieces ---------------------------------------------------------------------------------------
def test_ablated_docs_keep_the_layout_and_loss_mask(val, default_space):
    sp = Specials.from_space(default_space)
    a, b = val[0], val[-1]
    for task in ("t2a", "a2t"):
        own = a.doc(task, sp)
        swapped = with_prompt(own, prompt_of(b.doc(task, sp), sp), sp)
        expected = build_doc(task, media=b.media if task == "a2t" else a.media,
                             caption=a.caption if task == "a2t" else b.caption, sp=sp)
        assert np.array_equal(swapped.ids, expected.ids) and np.array_equal(swapped.targets, expected.targets)
        empty = with_prompt(own, np.zeros(0, np.int64), sp)
        assert len(empty) == len(own) - len(prompt_of(own, sp)) and empty.targets.sum() == own.targets.sum()


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in (2, 3, 7, 50):
        for seed in range(20):
            p = derangement(n, seed)
            assert sorted(p.tolist()) == list(range(n)) and not np.any(p == np.arange(n))
    assert np.array_equal(derangement(50, 3), derangement(50, 3))
    assert not np.array_equal(derangement(50, 3), derangement(50, 4))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_retrieval_credit_shares_ties():
    assert retrieval_credit(1.0, np.array([2.0, 3.0])) == 1.0
    assert retrieval_credit(1.0, np.array([0.5, 3.0])) == 0.0
    assert retrieval_credit(1.0, np.array([1.0, 1.0, 3.0])) == pytest.approx(1 / 3)


def test_bootstrap_interval_on_a_known_distribution():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 1.0, 400)
    iv = bootstrap_mean(x, seed=1)
    se = 1.0 / np.sqrt(400)
    assert iv.n == 400 and iv.mean == pytest.approx(x.mean())
    assert iv.high - iv.low == pytest.approx(2 * 1.96 * se, rel=0.15) and iv.includes(2.0)
    assert bootstrap_mean(x, seed=1) == iv and bootstrap_mean(x, seed=2) != iv
    covered = sum(bootstrap_mean(rng.normal(0.0, 1.0, 50), seed=s, resamples=500).includes(0.0) for s in range(200))
    assert 0.88 <= covered / 200 <= 0.99
    d = bootstrap_mean_difference(x + 0.5, x, seed=0)
    assert d.low == pytest.approx(0.5) and d.high == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in count"):
        bootstrap_mean_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no values"):
        bootstrap_mean([])


def test_a_dataset_of_another_token_space_is_refused(data, default_space):
    from sharding.errors import ShardError
    from train_helpers import other_space

    other = other_space(default_space)
    with pytest.raises(ShardError, match=other.id[:12]):
        read_samples([data], "val", other)


def test_a_sample_limit_is_a_seeded_choice_in_reader_order(data, default_space):
    every = [s.id for s in read_samples([data], "val", default_space).samples]
    five = [s.id for s in read_samples([data], "val", default_space, limit=5, seed=3).samples]
    assert len(five) == 5 and len(set(five)) == 5 and set(five) < set(every)
    assert five == sorted(five, key=every.index)  # reader order kept
    assert five == [s.id for s in read_samples([data], "val", default_space, limit=5, seed=3).samples]
    assert five != [s.id for s in read_samples([data], "val", default_space, limit=5, seed=4).samples]
    assert read_samples([data], "val", default_space, limit=5).captioned == len(every) == 12
