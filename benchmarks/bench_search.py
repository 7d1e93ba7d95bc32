"""Time per iteration of the insert-position search vs training the final network, measured in one run.

Builds, from one search config (default: the CPU demo), the search model (ACLASearchModel on the supernet,
joint and alternate modes), the final network's model (RestorationModel on ACLAEDSR/ACLARCAN with ACLA at
``--positions``) and the plain backbone's, and times ``optimize_parameters`` (forward, losses, backward,
optimizer steps) on the same random batches of the config's batch and patch size, round-robin so that the
machine's load affects each alike. Data loading is not included. Prints the median seconds per iteration
(CPU time of the process, ``time.process_time``, and wall time) and the ratios of the CPU times to the final
network's: on the shared 2-core machine, wall times with 2 threads were distorted up to ten-fold by another
job (OpenMP threads wait for descheduled siblings), hence ``--threads 1`` by default. With ``--device cuda``
the models train on one GPU and the times are wall times between ``torch.cuda.synchronize`` calls.

``--sampling-bound`` also times the search and the final network with the key sampling (``sample_keys``,
forward and backward) replaced by a stand-in of negligible cost that keeps every other operation and
gradient: the ratio of those two rows is a bound that no faster key sampler can beat on the machine.

Usage: python benchmarks/bench_search.py [-opt options/search/demo_search_SRx2.yml] [--positions 2 4 6]
       [--iters 10] [--threads 1] [--batch B] [--device cpu] [--sampling-bound]
"""
import contextlib
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
from acla_basicsr.archs import cla_modules  # noqa: E402
from acla_basicsr.cli.args import (ArgumentParser, existing_file, non_negative_int, positive_int,  # noqa: E402
                                   torch_device)
import yaml  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils.options import ordered_yaml  # noqa: E402


def parsed(opt, root, num_gpu=0):
    """The options as basicsr's parse_options returns them (the repository as ``root_path``, which relative
    paths such as ``train.search.final_config`` are read from), writing into ``root``."""
    opt = copy.deepcopy(opt)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, root_path=ROOT, num_gpu=num_gpu)
    opt['path'].update(experiments_root=root, models=osp.join(root, 'models'),
                       training_states=osp.join(root, 'training_states'), log=root)
    opt['logger']['use_tb_logger'] = False
    return opt


def free_sampling(values, offsets, weights, max_memory_mb=None, method=None):
    """A stand-in for ``sample_keys`` of negligible cost: one pass over each input, gradients to all three."""
    return values.sum(1) * weights.sum((1, 2)).unsqueeze(1) + offsets.sum((1, 2, 3)).unsqueeze(1)


@contextlib.contextmanager
def sampler(function):
    """Within the block, the CLA/ACLA modules sample their keys with ``function``."""
    saved, cla_modules.sample_keys = cla_modules.sample_keys, function
    try:
        yield
    finally:
        cla_modules.sample_keys = saved


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', type=existing_file, default=osp.join(ROOT, 'options', 'search', 'demo_search_SRx2.yml'))
    parser.add_argument('--positions', type=non_negative_int, nargs='*', default=None,
                        help='positions of the final network; default: every other candidate')
    parser.add_argument('--iters', type=positive_int, default=10, help='timed iterations per model (after 2 warm-up)')
    parser.add_argument('--threads', type=positive_int, default=1)
    parser.add_argument('--batch', type=positive_int, default=None, help="batch size; default: the config's")
    parser.add_argument('--device', type=torch_device, choices=('cpu', 'cuda'), default='cpu',
                        help="'cpu' or 'cuda' (one GPU; times are then wall times between torch.cuda.synchronize "
                        'calls)')
    parser.add_argument('--sampling-bound', action='store_true',
                        help='also time the search and the final network with key sampling of negligible cost')
    args = parser.parse_args(argv)
    cuda = args.device == 'cuda'
    torch.set_num_threads(args.threads)
    with open(args.opt) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    root = tempfile.mkdtemp(prefix='bench_search_')
    num_gpu = 1 if cuda else 0
    search = build_model(parsed(opt, root, num_gpu))
    supernet = search.get_bare_model(search.net_g)
    positions = args.positions if args.positions is not None else supernet.insert_positions[1::2]
    alternate_opt = parsed(opt, root, num_gpu)
    alternate_opt['train']['search']['mode'] = 'alternate'
    models = {'search (joint)': search, 'search (alternate)': build_model(alternate_opt)}

    def final_opt(pos):
        final = parsed(opt, root, num_gpu)
        final['model_type'] = 'RestorationModel'
        final['network_g'] = supernet.final_network_opt(pos)
        final['train'] = {k: v for k, v in final['train'].items() if k not in ('search', 'optim_arch')}
        return final

    final_label = f'final network, ACLA at {positions}'
    models[final_label] = build_model(final_opt(positions))
    models['backbone alone'] = build_model(final_opt([]))
    samplers = dict.fromkeys(models, cla_modules.sample_keys)
    if args.sampling_bound:  # fresh models (their random initial weights do not change the time per step)
        models['search (joint), key sampling free'] = build_model(parsed(opt, root, num_gpu))
        models[f'{final_label}, key sampling free'] = build_model(final_opt(positions))
        samplers['search (joint), key sampling free'] = samplers[f'{final_label}, key sampling free'] = free_sampling

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
            with sampler(samplers[label]):
                if cuda:
                    torch.cuda.synchronize()
                cpu, wall = time.process_time(), time.perf_counter()
                model.optimize_parameters(it)
                if cuda:
                    torch.cuda.synchronize()
                if it > 2:
                    wall = time.perf_counter() - wall
                    times[label].append((wall if cuda else time.process_time() - cpu, wall))
    med = {label: [statistics.median(v) for v in zip(*runs)] for label, runs in times.items()}
    reference = med[final_label][0]
    device = torch.cuda.get_device_name() if cuda else 'cpu'
    print(f'{osp.relpath(args.opt, ROOT)}: batch {batch}, LR patch {gt_size // scale}, {args.threads} threads, '
          f'{args.iters} timed iterations each (median), random data, no data loading, device {device}, '
          f'torch {torch.__version__}')
    print(f'| model | s / iteration ({"wall time, synchronised" if cuda else "CPU time"}) | wall s / iteration | '
          'vs final network |')
    print('|---|---|---|---|')
    for label, (cpu, wall) in med.items():
        print(f'| {label} | {cpu:.3f} | {wall:.3f} | {cpu / reference:.2f}x |')
    if args.sampling_bound:
        bound = med['search (joint), key sampling free'][0] / med[f'{final_label}, key sampling free'][0]
        print(f'with key sampling of negligible cost in both, search (joint) / final network = {bound:.2f}x: '
              'no faster key sampler gets the search below this ratio on this machine')
    params = {label: sum(p.numel() for p in m.get_bare_model(m.net_g).parameters()) for label, m in models.items()}
    print(f"parameters: supernet {params['search (joint)'] / 1e6:.3f} M, final {params[final_label] / 1e6:.3f} M, "
          f"backbone {params['backbone alone'] / 1e6:.3f} M")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
