"""Layer-wise and attention distillation (DynaBERT / TinyBERT) and in-place distillation in the supernet."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch

from conftest import tiny_batch, tiny_model
from supernet.errors import ConfigError
from supernet.model import EncoderOutput, LayerState
from supernet.space import SubnetConfig
from supernet.train import TrainConfig, attention_loss, layer_loss


def _args(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]


def _output(states: list[LayerState]) -> EncoderOutput:
    return EncoderOutput(logits=torch.zeros(1, 2), hidden=states[-1].hidden, mask=states[-1].mask, states=states)


def _tiny_finetuning() -> tuple:
    """A teacher and a student (3 layers), 32 random examples of 10 tokens, a sub-network that
    narrows and skips layers, and the examples as one batch: what the fine-tuning tests train."""
    from supernet.data import Encoded

    teacher, student = tiny_model(seed=1, layers=3), tiny_model(seed=0, layers=3)
    g = torch.Generator().manual_seed(0)
    n, T = 32, 10
    ids = torch.randint(5, 120, (n, T), generator=g)
    ids[:, 0] = 2
    enc = Encoded(ids.tolist(), [[0] * T for _ in range(n)], (torch.arange(n) % 2).numpy())
    cfg = SubnetConfig((4, 2, 4), (64, 32, 64), (True, False, True), (1.0, 1.0, 1.0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return teacher, student, enc, cfg, batch


def test_states_cover_the_embeddings_and_each_kept_layer_with_their_positions() -> None:
    model, batch = tiny_model(layers=4), tiny_batch()
    cfg = SubnetConfig((4, 2, 4, 1), (64, 32, 16, 64), (True, False, True, True), (1.0, 1.0, 0.5, 0.5))
    out = model(*_args(batch), subnet=cfg, states=True)
    assert [s.layer for s in out.states] == [-1, 0, 2, 3]
    assert torch.equal(out.states[-1].hidden, out.hidden)
    lengths = batch["attention_mask"].sum(1)
    after_drop = out.states[2]  # layer 2 keeps half the tokens, [CLS] first, in input order
    assert after_drop.hidden.shape[:2] == after_drop.positions.shape == after_drop.mask.shape
    assert after_drop.hidden.shape[-1] == 32  # narrowed heads and FFN keep the hidden size
    for b in range(len(lengths)):
        pos = after_drop.positions[b][after_drop.mask[b]]
        assert pos[0] == 0 and bool((pos[1:] > pos[:-1]).all()) and bool((pos < lengths[b]).all())
        assert len(pos) == -(-int(lengths[b]) // 2)
    assert not model(*_args(batch), subnet=cfg).states  # only when asked for


def test_layer_loss_is_zero_against_itself_and_positive_against_another_model() -> None:
    model, batch = tiny_model(), tiny_batch()
    full = model(*_args(batch), states=True)
    assert layer_loss(full, full).item() == 0.0
    other = tiny_model(seed=1)(*_args(batch), states=True)
    assert layer_loss(other, full).item() > 0.0


def test_an_extracted_model_maps_its_layers_to_the_ones_it_came_from() -> None:
    """Extracted, layer k of the small model learns the teacher layer it was cut from; its
    loss equals the supernet's for the same sub-network (extraction is exact)."""
    model, batch = tiny_model(layers=4), tiny_batch()
    teacher = tiny_model(seed=1, layers=4)
    cfg = SubnetConfig((2, 4, 4, 3), (16, 64, 64, 32), (True, False, True, True), (1.0, 1.0, 0.7, 0.4))
    t_out = teacher(*_args(batch), states=True)
    small = model.extract(cfg)
    small_out = small(*_args(batch), states=True)
    assert [s.layer for s in small_out.states] == [-1, 0, 2, 3]
    torch.testing.assert_close(layer_loss(small_out, t_out),
                               layer_loss(model(*_args(batch), subnet=cfg, states=True), t_out))


def test_layer_loss_by_hand() -> None:
    """Teacher states hold their layer's number at every slot; the student holds zeros after
    layer 2, on the slots of input positions 0 and 2 (one alive, one dead slot)."""
    B, T, H = 1, 4, 2
    teacher = _output([LayerState(i, torch.full((B, T, H), float(i + 1)) + torch.arange(T)[None, :, None],
                                  torch.arange(T)[None], torch.ones(B, T, dtype=torch.bool)) for i in (-1, 0, 1, 2)])
    student = _output([
        LayerState(-1, teacher.states[0].hidden.clone(), torch.arange(T)[None], torch.ones(B, T, dtype=torch.bool)),
        LayerState(2, torch.zeros(B, 2, H), torch.tensor([[0, 2]]), torch.tensor([[True, False]])),
    ])
    # embeddings: 0; layer 2 (teacher value 3 + position): slot 0 -> (3 + 0)^2 = 9, slot 1 dead.
    assert layer_loss(student, teacher).item() == pytest.approx((0.0 + 9.0) / 2)
    student.states[1].mask[0, 1] = True  # now slot 1 counts: (3 + 2)^2 = 25
    assert layer_loss(student, teacher).item() == pytest.approx((0.0 + (9.0 + 25.0) / 2) / 2)
    with pytest.raises(ConfigError, match="source layer 5"):
        layer_loss(_output([LayerState(5, torch.zeros(B, T, H), torch.arange(T)[None],
                                       torch.ones(B, T, dtype=torch.bool))]), teacher)


def test_layer_distillation_trains_and_pulls_states_towards_the_teacher() -> None:
    """A few steps of fine-tuning with the layer loss lower it for the trained sub-network."""
    from supernet.train import StageConfig, finetune_subnet

    teacher, student, enc, cfg, batch = _tiny_finetuning()
    t_out = teacher(*_args(batch), states=True)
    before = layer_loss(student.extract(cfg)(*_args(batch), states=True), t_out).item()
    after = {}
    for weight in (0.0, 1.0):
        with tempfile.TemporaryDirectory() as d:
            model, trained = finetune_subnet(student, teacher, cfg, enc, d, TrainConfig(batch_size=8, log_every=1),
                                             StageConfig(epochs=10, lr=1e-2), layer_weight=weight, progress=False)
        assert trained
        after[weight] = layer_loss(model.eval()(*_args(batch), states=True), t_out).item()
    assert after[1.0] < 0.8 * before and after[1.0] < after[0.0]


def test_attention_scores_cover_the_tokens_each_layer_was_handed() -> None:
    model, batch = tiny_model(layers=4), tiny_batch()
    cfg = SubnetConfig((4, 2, 4, 1), (64, 32, 16, 64), (True, False, True, True), (1.0, 1.0, 0.5, 0.5))
    plain = model(*_args(batch), subnet=cfg)
    out = model(*_args(batch), subnet=cfg, attention=True)
    torch.testing.assert_close(out.logits, plain.logits)  # asking for the scores changes nothing
    assert out.states[0].scores is None  # the embeddings attend to nothing
    for before, s, heads in zip(out.states[:-1], out.states[1:], (4, 4, 1), strict=True):
        T = before.hidden.shape[1]
        assert s.scores is not None and s.scores.shape == (4, heads, T, T)
    assert out.states[3].scores.shape[-1] < batch["input_ids"].shape[1]  # after layer 2's drop
    assert all(s.scores is None for s in model(*_args(batch), subnet=cfg, states=True).states)


def test_attention_loss_maps_heads_layers_and_dropped_tokens_to_the_teacher_s() -> None:
    """The model as its own teacher: a sub-network whose attention inputs are the full
    model's (narrowed only in its last layer's heads, tokens dropped after a layer's
    attention, a skipped last layer) has exactly the teacher's scores on the heads and
    token pairs it keeps, so its loss is 0; narrowing the first layer changes every later
    layer's input, and the loss is positive."""
    model, batch = tiny_model(layers=4), tiny_batch()
    t_out = model(*_args(batch), attention=True)
    assert attention_loss(t_out, t_out).item() == 0.0
    same = [SubnetConfig((4, 4, 4, 2), (64,) * 4, (True,) * 4, (1.0,) * 4),  # last layer: heads 0, 1
            SubnetConfig((4,) * 4, (64,) * 4, (True,) * 4, (1.0, 1.0, 0.5, 0.5)),  # gathered slots in layer 3
            SubnetConfig((4,) * 4, (64,) * 4, (True, True, True, False), (1.0, 0.6, 0.6, 0.6))]
    for cfg in same:
        out = model(*_args(batch), subnet=cfg, attention=True)
        assert attention_loss(out, t_out).item() < 1e-9, cfg.describe()
        small = model.extract(cfg)(*_args(batch), attention=True)  # extraction keeps the mapping
        assert attention_loss(small, t_out).item() < 1e-9, cfg.describe()
    narrowed = SubnetConfig((2, 4, 4, 4), (64,) * 4, (True,) * 4, (1.0,) * 4)
    assert attention_loss(model(*_args(batch), subnet=narrowed, attention=True), t_out).item() > 1e-3


def test_attention_loss_by_hand() -> None:
    """One layer of 1 head over input positions 0 and 2 of the teacher's 3 (slot 1 dead):
    only the pair (0, 0) counts."""
    B, T = 1, 3
    t_scores = torch.arange(2 * T * T, dtype=torch.float).view(B, 2, T, T)  # 2 heads; head 0: 0..8 row-major
    full = torch.ones(B, T, dtype=torch.bool)
    teacher = _output([LayerState(-1, torch.zeros(B, T, 2), torch.arange(T)[None], full),
                       LayerState(0, torch.zeros(B, T, 2), torch.arange(T)[None], full, t_scores)])
    handed = LayerState(-1, torch.zeros(B, 2, 2), torch.tensor([[0, 2]]), torch.tensor([[True, False]]))
    student = _output([handed, LayerState(0, torch.zeros(B, 2, 2), torch.tensor([[0, 2]]),
                                          torch.tensor([[True, False]]), torch.full((B, 1, 2, 2), 3.0))])
    assert attention_loss(student, teacher).item() == pytest.approx((3.0 - 0.0) ** 2)
    handed.mask[0, 1] = True  # pairs (0,0) (0,2) (2,0) (2,2): teacher head 0 holds 0, 2, 6, 8
    assert attention_loss(student, teacher).item() == pytest.approx((9 + 1 + 9 + 25) / 4)
    too_wide = _output([handed, LayerState(0, torch.zeros(B, 2, 2), torch.tensor([[0, 2]]), handed.mask,
                                           torch.zeros(B, 3, 2, 2))])
    with pytest.raises(ConfigError, match="3 heads, the teacher's 2"):
        attention_loss(too_wide, teacher)
    with pytest.raises(ConfigError, match="no attention scores for source layer 0"):
        attention_loss(student, _output(teacher.states[:1] + [LayerState(0, torch.zeros(B, T, 2),
                                                                         torch.arange(T)[None], full)]))


def test_attention_distillation_trains_and_pulls_scores_towards_the_teacher() -> None:
    from supernet.train import StageConfig, finetune_folder, finetune_subnet

    teacher, student, enc, cfg, batch = _tiny_finetuning()
    t_out = teacher(*_args(batch), attention=True)
    before = attention_loss(student.extract(cfg)(*_args(batch), attention=True), t_out).item()
    after = {}
    stage = StageConfig(epochs=10, lr=1e-2)
    for weight in (0.0, 1.0):
        with tempfile.TemporaryDirectory() as d:
            folder = finetune_folder(d, cfg, stage, attention_weight=weight)
            model, trained = finetune_subnet(student, teacher, cfg, enc, folder, TrainConfig(batch_size=8, log_every=1),
                                             stage, attention_weight=weight, progress=False)
            assert trained and folder.name.endswith("_aw1") == (weight == 1.0)
            assert json.loads((folder / "finetune.json").read_text()).get("attention_weight") == (weight or None)
        after[weight] = attention_loss(model.eval()(*_args(batch), attention=True), t_out).item()
    assert after[1.0] < 0.5 * before and after[1.0] < 0.5 * after[0.0]


def test_in_place_distillation_targets_the_largest_sub_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """With distill_from="largest", every sub-network after the largest distils from the
    largest's logits of the same step (detached); with "teacher", from the teacher's."""
    import supernet.train as train

    seen: list[torch.Tensor] = []
    real = train.kd_loss
    monkeypatch.setattr(train, "kd_loss", lambda s, t, temp: (seen.append(t), real(s, t, temp))[1])
    teacher, student, batch = tiny_model(seed=1), tiny_model(seed=0), tiny_batch()
    space = student.shape.search_space()

    class Runner:
        def __init__(self, cfg: TrainConfig) -> None:
            self.cfg, self.total = cfg, 1

        def run(self, step_fn) -> None:  # one step, as StageRunner would call it
            step_fn(batch, 0)

    t_logits = teacher(*_args(batch)).logits
    for source in ("teacher", "largest"):
        seen.clear()
        train.train_supernet(student, teacher, space, Runner(TrainConfig(n_random=1, distill_from=source)))  # type: ignore[arg-type]
        assert len(seen) == 3
        torch.testing.assert_close(seen[0], t_logits)  # the largest always learns the teacher
        largest = student(*_args(batch), subnet=space.largest()).logits
        for target in seen[1:]:
            assert not target.requires_grad
            if source == "teacher":
                torch.testing.assert_close(target, t_logits)
            else:
                assert not torch.allclose(target, t_logits)
                torch.testing.assert_close(target, largest)


def test_training_config_checks_the_new_fields() -> None:
    with pytest.raises(ConfigError, match="distill_from"):
        TrainConfig(distill_from="student").validate()
    with pytest.raises(ConfigError, match="layer_weight"):
        TrainConfig(layer_weight=-1.0).validate()
    assert TrainConfig.from_dict({}).layer_weight == 0.0  # runs written before these fields load unchanged


def test_progressive_shrinking_opens_depth_then_width_then_retention() -> None:
    from supernet.train import sandwich

    space = tiny_model(layers=4).shape.search_space()
    cfg = TrainConfig(n_random=3, schedule="progressive")
    total = 90
    phases: dict[str, list[SubnetConfig]] = {"depth": [], "width": [], "all": []}
    for step in range(total):
        phases[["depth", "width", "all"][3 * step // total]] += sandwich(space, step, cfg, total)[1:]
    full_width = {(space.max_heads, space.max_ffn)}
    for name, configs in phases.items():
        widths = {(c.heads[i], c.ffn[i]) for c in configs for i in c.kept_layers}
        depths = {len(c.kept_layers) for c in configs}
        retentions = {r for c in configs for r in c.retention}
        assert len(depths) > 1  # depth is elastic from the first step
        assert (widths == full_width) == (name == "depth")
        assert (retentions == {1.0}) == (name != "all")
    assert sandwich(space, 0, cfg, total)[1] == sandwich(space, 0, cfg, total)[1]  # seeded by step
    with pytest.raises(ConfigError, match="total"):
        sandwich(space, 0, cfg)
    whole = sandwich(space, 0, TrainConfig(n_random=3), total)
    assert {r for c in whole for r in c.retention} != {1.0}  # the default samples everything at once
