"""Time per iteration of the insert-position search vs training the final network, measured in one run.

Builds, from one search config (default: the CPU demo), the search model (ACLASearchModel on the supernet,
joint and alternate modes), the final network's model (RestorationModel on ACLAEDSR/ACLARCAN with ACLA at
``--positions``) and the plain backbone's, and times ``optimize_parameters`` (forward, losses, backward,
optimizer steps) on the same random batches of the config's batch and patch size, round-robin so that the
machine's load affects each alike. Data loading is not included. Prints the median seconds per iteration
(CPU time of the process, ``time.process_time``, and wall time) and the ratios of the CPU times to the final
network's: on the shared 2-core machine, wall times with 2 threads were distorted up to ten-fold by another
job (OpenMP threads wait for descheduled siblings), hence ``--threads 1`` by default.

Usage: python benchmarks/bench_search.py [-opt options/search/demo_search_SRx2.yml] [--positions 2 4 6]
       [--iters 10] [--threads 1] [--batch B]
"""
import argparse
import copy
import os.path as osp
import shutil
import statistics
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import acla_basicsr  # noqa: E402,F401
import torch  # noqa: E402
import yaml  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils.options import ordered_yaml  # noqa: E402


def parsed(opt, root):
    """The options as basicsr's parse_options returns them (the repository as ``root_path``, which relative
    paths such as ``train.search.final_config`` are read from), writing into ``root``."""
    opt = copy.deepcopy(opt)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, root_path=ROOT, num_gpu=0)
    opt['path'].update(experiments_root=root, models=osp.join(root, 'models'),
                       training_states=osp.join(root, 'training_states'), log=root)
    opt['logger']['use_tb_logger'] = False
    return opt


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', default=osp.join(ROOT, 'options', 'search', 'demo_search_SRx2.yml'))
    parser.add_argument('--positions', type=int, nargs='*', default=None,
                        help='positions of the final network; default: every other candidate')
    parser.add_argument('--iters', type=int, default=10, help='timed iterations per model (after 2 warm-up)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--batch', type=int, default=None, help="batch size; default: the config's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.opt) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    root = tempfile.mkdtemp(prefix='bench_search_')
    search = build_model(parsed(opt, root))
    supernet = search.get_bare_model(search.net_g)
    positions = args.positions if args.positions is not None else supernet.insert_positions[1::2]
    alternate_opt = parsed(opt, root)
    alternate_opt['train']['search']['mode'] = 'alternate'
    models = {'search (joint)': search, 'search (alternate)': build_model(alternate_opt)}
    for label, pos in ((f'final network, ACLA at {positions}', positions), ('backbone alone', [])):
        final = parsed(opt, root)
        final['model_type'] = 'RestorationModel'
        final['network_g'] = supernet.final_network_opt(pos)
        final['train'] = {k: v for k, v in final['train'].items() if k not in ('search', 'optim_arch')}
        models[label] = build_model(final)

    train = opt['datasets']['train']
    batch, gt_size, scale = args.batch or train['batch_size_per_gpu'], train['gt_size'], opt.get('scale', 1)
    channels = opt['network_g'].get('num_in_ch', 3)
    generator = torch.Generator().manual_seed(0)
    batches = [{'lq': torch.rand(batch, channels, gt_size // scale, gt_size // scale, generator=generator),
                'gt': torch.rand(batch, opt['network_g'].get('num_out_ch', 3), gt_size, gt_size,
                                 generator=generator)} for _ in range(args.iters + 2)]
    times = {label: [] for label in models}
    for it, data in enumerate(batches, 1):
        for label, model in models.items():
            model.feed_data(data)
            cpu, wall = time.process_time(), time.perf_counter()
            model.optimize_parameters(it)
            if it > 2:
                times[label].append((time.process_time() - cpu, time.perf_counter() - wall))
    final_label = next(k for k in models if k.startswith('final'))
    med = {label: [statistics.median(v) for v in zip(*runs)] for label, runs in times.items()}
    reference = med[final_label][0]
    print(f'{osp.relpath(args.opt, ROOT)}: batch {batch}, LR patch {gt_size // scale}, {args.threads} threads, '
          f'{args.iters} timed iterations each (median), random data, no data loading, torch {torch.__version__}')
    print('| model | s / iteration (CPU time) | wall s / iteration | vs final network |')
    print('|---|---|---|---|')
    for label, (cpu, wall) in med.items():
        print(f'| {label} | {cpu:.3f} | {wall:.3f} | {cpu / reference:.2f}x |')
    params = {label: sum(p.numel() for p in m.get_bare_model(m.net_g).parameters()) for label, m in models.items()}
    print(f"parameters: supernet {params['search (joint)'] / 1e6:.3f} M, final {params[final_label] / 1e6:.3f} M, "
          f"backbone {params['backbone alone'] / 1e6:.3f} M")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
