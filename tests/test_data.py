"""Data pipeline sweeps and end-to-end checks: corrupt files in an epoch, sampling sweeps, real video, synthetic probes."""
import os
from pathlib import Path
import numpy as np, pytest, torch
from nonlocal_book.core import example_video
from nonlocal_book.data.video import *
from nonlocal_book.data.synthetic import *


@pytest.mark.parametrize('n', [1, 5, 57, 100, 301])
@pytest.mark.parametrize('frames,stride', [(8, 8), (4, 2), (16, 1)])
@pytest.mark.parametrize('short', ['loop', 'pad'])
def test_dense_indices_sweep(n, frames, stride, short):
    rng = np.random.default_rng(0)
    for train, clips in ((True, 1), (False, 10)):
        idx = dense_indices(n, frames, stride, clips, train, rng, short)
        assert idx.shape == (clips, frames) and idx.min() >= 0 and idx.max() < n
        if (frames - 1) * stride + 1 <= n: assert (np.diff(idx, axis=1) == stride).all()


@pytest.mark.parametrize('n', [1, 7, 8, 100])
def test_uniform_indices_sweep(n):
    idx = uniform_indices(n, 8, clips=3, train=False)
    assert idx.shape == (3, 8) and idx.min() >= 0 and idx.max() < n and (np.diff(idx, axis=1) >= 0).all()


def test_corrupt_file_left_out_and_reported_through_dataloader(tmp_path):
    from nonlocal_book.core import collate_good
    good = write_video(tmp_path / 'good.mp4', np.zeros((20, 16, 16, 3), np.uint8))
    (tmp_path / 'bad.mp4').write_bytes(os.urandom(3000))
    items = [(good, 0), (tmp_path / 'bad.mp4', 1)] * 3
    ds = VideoDataset(items, frames=4, stride=2, return_meta=True)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_good))
    assert sum(len(b[1]) for b, _ in batches) == 3                        # the epoch completes with the good clips only
    assert all((b[1] == 0).all() for b, _ in batches)                     # no bad video replaced by a good one (label 1)
    assert [x.index for _, bad in batches for x in bad] == [1, 3, 5]      # every bad file reported, from the worker


def test_real_video_through_pipeline():
    for name in ('carphone', 'bikes'):
        ds = VideoDataset([(example_video(name), 0)], frames=4, stride=4, train=False, clips=2,
                          transform=eval_transform(crop=64, short_side=80))
        x, y = ds[0]
        assert x.shape == (6, 3, 4, 64, 64) and torch.isfinite(x).all()


def test_shuffled_order_pairs_have_no_signal():
    rng = np.random.default_rng(0)
    for a, b in [('move_right', 'move_left'), ('appear', 'disappear'), ('approach', 'separate')]:
        xs, ys = [], []
        for lab, cls in ((0, a), (1, b)):
            for i in range(60):
                clip = torch.from_numpy(render_clip(cls, np.random.default_rng([7, lab, i]))).permute(3, 0, 1, 2).float() / 255
                clip = clip[:, torch.from_numpy(rng.permutation(16))]
                xs.append(frame_stats(clip).flatten()); ys.append(lab)
        x, y = torch.stack(xs), torch.tensor(ys)
        perm = torch.from_numpy(rng.permutation(len(y)))
        x, y = x[perm], y[perm]
        acc = probe_accuracy(x[:80], y[:80], x[80:], y[80:])
        assert abs(acc - 0.5) < 0.25, (a, acc)
