"""Resume is exact wherever the crash happens: first step, mid-epoch, last step of an epoch, in the second epoch."""
import pytest
import torch
from nonlocal_book.core import seed_everything
from nonlocal_book.train.learner import (Callback, CheckpointCB, Learner, MetricsCB, ToyClips, toy_model, read_history,
                                         ResumableSampler)


def make(folder, seed=0, cbs=(), every=3, epochs=2):
    seed_everything(seed)
    return Learner(toy_model(), ToyClips(40, augment=True), ToyClips(8, seed=1), epochs=epochs, batch_size=8, lr=0.05,
                   warmup_epochs=0.5, device='cpu', cbs=[MetricsCB(folder / 'metrics.jsonl'), CheckpointCB(folder, every=every), *cbs])


class CrashAt(Callback):
    def __init__(self, step): self.step = step
    def after_batch(self):
        learn = self.learn
        if learn.epoch * learn.steps_per_epoch + learn.batch == self.step: raise KeyboardInterrupt


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    return make(tmp_path_factory.mktemp('ref')).fit()


@pytest.mark.parametrize('step', [1, 3, 5, 7, 9])   # 5 steps per epoch: 5 is the last step of epoch 1
def test_resume_is_exact(tmp_path, reference, step):
    crashed = make(tmp_path, cbs=[CrashAt(step)])
    with pytest.raises(KeyboardInterrupt): crashed.fit()
    resumed = make(tmp_path, seed=99).load(tmp_path / 'last.pt').fit()
    for (k, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), f'{k} differs after a crash at step {step}'
    for ra, rb in zip(reference.history, resumed.history, strict=True):
        assert ra['clip_top1'] == rb['clip_top1'] and abs(ra['train_loss'] - rb['train_loss']) < 1e-6
    assert len(read_history(tmp_path / 'metrics.jsonl')) == 2


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='without --resume'):
        make(tmp_path).load(tmp_path / 'nope.pt')


def test_sampler_covers_each_epoch_once_per_rank_split():
    for world in (1, 2, 3):
        parts = [ResumableSampler(10, 4, seed=5, rank=r, world=world) for r in range(world)]
        got = sorted(sum((p.indices() for p in parts), []))
        assert set(got) == set(range(10)) and len(got) == -(-10 // world) * world
