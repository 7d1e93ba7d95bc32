"""Run basicsr's train or test pipeline with this project's checks, per-run fixes and error messages.

For the duration of one run (:func:`acla_basicsr.compat.replaced_globals`), ``train_pipeline`` and
``test_pipeline`` see:

- ``parse_options`` followed by the options schema and checks (:mod:`acla_basicsr.config`), so that a wrong
  option ends with one line and exit status 2 before anything is written;
- ``init_dist`` that trains on CPUs too (:func:`acla_basicsr.compat.init_dist`, with the options'
  ``dist_params``);
- ``load_resume_state`` and ``EnlargedSampler`` that resume exactly (:mod:`acla_basicsr.data.sampler`);
- ``build_dataset`` whose datasets name an image that cannot be decoded mid-run in one line, or skip it with
  ``skip_bad_images`` (:mod:`acla_basicsr.data.bad_images`).
"""
import copy
import os
import re
import sys

from acla_basicsr import compat
from acla_basicsr.cli.args import ArgumentParser, fail, non_negative_int
from acla_basicsr.config.checks import check_options
from acla_basicsr.config.files import project_root, read_options_file, resolve_relative_paths
from acla_basicsr.config.schema import check_schema
from acla_basicsr.data.bad_images import checked_build_dataset
from acla_basicsr.data.sampler import ResumableSampler
from acla_basicsr.errors import DataError, DivergenceError, OptionError, WriteError


def normalise_argv(argv):
    """Accept torch.distributed.launch's ``--local-rank`` beside basicsr's ``--local_rank``."""
    return [re.sub(r'^--local-rank', '--local_rank', arg) for arg in argv]


def _raw_options_from_argv(argv):
    """The ``-opt`` file as YAML read it (before basicsr's ``parse_options``), or None without ``-opt``."""
    if '-opt' not in argv or argv.index('-opt') + 1 >= len(argv):
        return None
    return read_options_file(argv[argv.index('-opt') + 1])


def _dist_params_from_argv(argv):
    """Read ``dist_params`` from the ``-opt`` file, for the pytorch launcher (see compat.init_dist)."""
    opt = _raw_options_from_argv(argv) or {}
    return dict(opt.get('dist_params') or {}) if isinstance(opt.get('dist_params'), dict) else {}


def _resumable_training(pipeline, run):
    """Replacements of ``train_pipeline``'s ``load_resume_state`` and ``EnlargedSampler`` for an exact resume.

    The state that the run resumes from is handed to the sampler, which skips the batches of the resumed
    epoch that were already used and restores the saved random states (:mod:`acla_basicsr.data.sampler`).
    """
    skipped = []

    def load_and_remember(opt):
        run['resume_state'] = compat.load_resume_state(opt, warn=skipped.append)
        return run['resume_state']

    def make_sampler(dataset, num_replicas, rank, ratio=1):
        # the first call after basicsr has set up the run's log file: the skipped states go there
        from basicsr.utils import get_root_logger
        while skipped:
            get_root_logger().warning(skipped.pop(0))
        opt = run['opt']
        batch_size = opt['datasets']['train']['batch_size_per_gpu']
        if not opt['dist'] and opt['num_gpu'] > 1:  # basicsr's build_dataloader: one batch over every GPU
            batch_size *= opt['num_gpu']
        return ResumableSampler(dataset, num_replicas, rank, ratio, batch_size=batch_size,
                                resume_state=run.get('resume_state'))

    return {'load_resume_state': load_and_remember, 'EnlargedSampler': make_sampler}


def run_pipeline(pipeline, root_path):
    """Run ``basicsr.train.train_pipeline`` or ``basicsr.test.test_pipeline`` from ``root_path``.

    The options are checked right after basicsr parses them (:func:`check_options`); a wrong
    option ends the run with one line on stderr and exit status 2, before anything is written.
    A training run that diverges ends the same way (:class:`~acla_basicsr.errors.DivergenceError`), and so
    does an image that cannot be decoded mid-run (:class:`~acla_basicsr.errors.DataError`); a resumed
    training continues exactly as an uninterrupted one (:mod:`acla_basicsr.data.sampler`).
    """
    sys.argv = normalise_argv(sys.argv)
    parse_options = pipeline.__globals__['parse_options']
    run = {}

    def parse_and_check(*args, **kwargs):
        raw = _raw_options_from_argv(sys.argv[1:])
        if raw is not None:  # parse_options itself dies with a KeyError on a missing or misspelt section
            check_schema(raw, is_train=kwargs.get('is_train', args[1] if len(args) > 1 else True),
                         warn=lambda line: None)  # warned once, after parsing
        from basicsr.utils import set_random_seed
        opt, parsed = parse_options(*args, **kwargs)
        # basicsr seeds before it applies --force_yml, so 'manual_seed=S' there would reach only the
        # data loader workers; seeding again (nothing random happened in between) makes it seed the run
        set_random_seed(opt['manual_seed'] + opt['rank'])
        resolve_relative_paths(opt, root_path)
        check_options(opt)
        run['opt'] = opt
        return opt, parsed

    replacements = {'parse_options': parse_and_check}
    if 'EnlargedSampler' in pipeline.__globals__:  # the training pipeline
        replacements.update(_resumable_training(pipeline, run))
    if 'build_dataset' in pipeline.__globals__:
        replacements['build_dataset'] = checked_build_dataset(pipeline.__globals__['build_dataset'],
                                                              lambda: run['opt'].get('datasets'))

    def init_dist(launcher, **kwargs):
        compat.init_dist(launcher, **{**_dist_params_from_argv(sys.argv[1:]), **kwargs})

    try:
        with compat.replaced_globals(pipeline, replacements), \
                compat.replaced_globals(parse_options, {'init_dist': init_dist}):
            pipeline(root_path)
    except (OptionError, DivergenceError) as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        sys.exit(2)
    except (WriteError, DataError) as error:  # a file that cannot be written or an image that cannot be read:
        # the checkpoints and states written before are intact
        hint = ' The run stopped there; resume it with --auto_resume.' if 'EnlargedSampler' in replacements else ''
        print(f'error: {error}{hint}', file=sys.stderr, flush=True)
        sys.exit(2)


# the environment that each launcher needs: torchrun's and slurm's variables
LAUNCHER_ENV = {'pytorch': ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'),
                'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')}


def command_line_parser(kind):
    """The arguments of basicsr 1.4.2's ``parse_options``, parsed by :class:`~acla_basicsr.cli.args.ArgumentParser`."""
    parser = ArgumentParser(prog=f'{kind}.py', description=f'{kind.capitalize()} with basicsr and acla_basicsr.')
    parser.add_argument('-opt', required=True, help='options YAML file')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true', help='resume from the newest training state')
    parser.add_argument('--debug', action='store_true', help='debug_ run: validate and save every 8 iterations')
    parser.add_argument('--local_rank', type=non_negative_int, default=0, help='set by torch.distributed.launch')
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY:SUBKEY=VALUE',
                        help='override options, e.g. train:total_iter=1000 logger:print_freq=10')
    return parser


def forced_options(raw, entries, is_train):
    """``raw`` (an options file as read) checked by the schema, then with the ``--force_yml`` entries applied
    as basicsr applies them, each checked again.

    Raises:
        OptionError: naming the option of the file, or the entry: no ``=``, an empty key, a key path whose
            sections are not in the options, or a key or value that the options schema refuses.
    """
    from basicsr.utils.options import _postprocess_yml_value
    check_schema(raw, is_train=is_train, warn=lambda line: None)  # warned once, after basicsr parses it
    opt = copy.deepcopy(raw)
    for entry in entries:
        where = f'--force_yml {entry}'
        if entry.count('=') != 1 or not entry.split('=')[0].strip():
            raise OptionError(f'{where}: expected KEY:SUBKEY=VALUE with one =, such as train:total_iter=1000.')
        keys, value = (v.strip() for v in entry.split('='))
        keys = keys.split(':')
        section = opt
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(section.get(key), dict):
                raise OptionError(f"{where}: {':'.join(keys[:depth + 1])} is not a section of the options file; "
                                  '--force_yml sets options in its sections; add the section to the file.')
            section = section[key]
        try:
            section[keys[-1]] = _postprocess_yml_value(value)
        except Exception as error:  # noqa: B902  # a list value that Python cannot read
            raise OptionError(f'{where}: {value} is not a value ({error}); write a list as [1, 2].') from None
        try:
            check_schema(opt, is_train=is_train, warn=lambda line: None)
        except OptionError as error:
            raise OptionError(f'{where}: {error}') from None
    return opt


def check_command_line(kind, argv):
    """Parse and check ``train.py``'s or ``test.py``'s arguments before anything is imported or created.

    A malformed command line ends with one line on stderr and exit status 2 (:mod:`acla_basicsr.cli.args`):
    an unknown or missing argument, an ``-opt`` that is missing, a folder or not YAML, options that the schema
    refuses, a ``--force_yml`` entry without ``=`` or with an unknown key, a launcher without its environment.
    """
    args = command_line_parser(kind).parse_args(argv)
    try:
        forced_options(read_options_file(args.opt), args.force_yml or [], is_train=kind == 'train')
    except OptionError as error:
        fail(error)
    missing = [v for v in LAUNCHER_ENV.get(args.launcher, ()) if v not in os.environ]
    if missing:
        start = 'torchrun --nproc_per_node=N' if args.launcher == 'pytorch' else 'srun'
        fail(f'--launcher {args.launcher}: {missing[0]} is not set; start the run with {start} '
             f'{kind}.py ... --launcher {args.launcher}, or leave out --launcher to run one process.')
    return args


def console_train():
    """The console command ``acla-train``: ``acla_basicsr/train.py`` with :func:`project_root`."""
    main('train', project_root())


def console_test():
    """The console command ``acla-test``: ``acla_basicsr/test.py`` with :func:`project_root`."""
    main('test', project_root())


def main(kind, root_path, argv=None):
    """Entry point of ``acla_basicsr/train.py`` (kind 'train') and ``acla_basicsr/test.py`` ('test').

    ``argv`` (default ``sys.argv[1:]``) is checked first (:func:`check_command_line`), then handed to basicsr.
    """
    argv = normalise_argv(sys.argv[1:] if argv is None else list(argv))
    check_command_line(kind, argv)
    sys.argv = sys.argv[:1] + argv
    if kind == 'train':
        from basicsr.train import train_pipeline as pipeline
    else:
        from basicsr.test import test_pipeline as pipeline
    run_pipeline(pipeline, root_path)
