import os.path as osp
from collections import OrderedDict

import torch
from torch.nn.parallel import DistributedDataParallel

from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, tensor2img
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from acla_basicsr import compat, fileio
from acla_basicsr.data.degradations import DEMOSAIC_REFERENCES
from acla_basicsr.data.sampler import capture_rng_state, restore_rng_state, rng_state_for_save
from acla_basicsr.errors import OptionError
from acla_basicsr.inference import DEFAULT_TILE_PAD, run_network
from acla_basicsr.inference.checkpoints import described_state_dict, training_description
from acla_basicsr.inference.network import load_weights
from acla_basicsr.inference.tiles import TILE_PAD, TILE_SIZE
from acla_basicsr.option_spec import Option, read_section
from .divergence import DIVERGENCE_OPTIONS, DivergenceGuard
from .schedule_options import (GATE_TEMPERATURE_OPTIONS, MACS_PENALTY_OPTIONS, anneal, check_gate_temperature,
                               check_macs_penalty, gate_noise, macs_weight)

TILE_OPTIONS = {'tile_size': TILE_SIZE, 'tile_pad': TILE_PAD}


def bicubic_reference(lq, scale):
    """MATLAB-bicubic upsampling of a (B, C, h, w) batch in [0, 1], the usual SR baseline."""
    images = [imresize(img.permute(1, 2, 0).cpu().numpy(), scale) for img in lq]
    return torch.stack([torch.from_numpy(img).permute(2, 0, 1) for img in images]).clamp_(0, 1)


def input_reference(lq, scale):
    """The degraded input itself, the baseline of denoising and artifact reduction."""
    return lq


@MODEL_REGISTRY.register()
class RestorationModel(SRModel):
    """SRModel with named loss terms, losses on the network's internals, and a baseline at validation.

    It is the model of every network of this project; with only ``pixel_opt`` and
    ``perceptual_opt`` it trains exactly like basicsr's ``SRModel``. Options beyond SRModel's:

    - ``train.pixel_opt`` may name a loss that returns a dict of named terms (for example EARN's
      L1 + SSIM + perceptual loss); every term is logged on its own and their sum is optimised.
    - ``train.network_opt``: a list of losses computed from the network itself rather than from
      its output (for example ENLCA's contrastive loss). Each is called as
      ``loss(net, current_iter)`` with the bare network and returns a tensor, a dict of named
      terms, or None (no contribution at this iteration, e.g. during a warm-up).
    - ``val.reference``: the baseline whose metrics are logged beside the network's at every
      validation, with the difference, so that a log says how much training gained:
      'bicubic' (MATLAB-bicubic upsampling of the input; default when scale > 1), 'input'
      (the degraded input; default when scale is 1) or ``~`` for none. Subclasses and datasets
      with other degradations add entries to :attr:`reference_functions`.

    - ``train.gate_temperature: {start, end, iters, mode, noise_end}``: the temperature of ACLA's key-gate
      relaxation, annealed (``exp`` or ``linear``), and the scale of the gate noise (1 -> ``noise_end``,
      linear), set before every step on a network that has ``set_temperature``; logged as ``gate_temp`` and
      ``gate_noise``.
    - ``train.macs_penalty: {lambda, macs_size, start_iter, ramp_iter}``: the objective becomes
      ``L_rec * (1 + lambda_t * E[added MACs] / backbone MACs)`` (lambda_t ramped in) with the expectation over
      the network's gates (``expected_attention_macs``, e.g. ACLA's open keys); the ratio is logged as ``macs_ratio``
      and the added term as ``l_macs`` (see :mod:`acla_basicsr.models.schedule_options`).
    - ``val.tile: {tile_size: 256, tile_pad: 16}``: validation and testing run the network tile by tile
      (input pixels; bounded memory on Urban100/Manga109-sized images), ``val.self_ensemble: true``: on the 8
      flips/transpositions of the input, averaged (see :mod:`acla_basicsr.inference`).
    - ``train.divergence``: what happens to a step whose loss or gradient is not finite (by default the
      run stops with one line and exit status 2, before a checkpoint is written), see
      :mod:`acla_basicsr.models.divergence`.

    A network may define ``training_stats()`` returning a dict of floats (for example ACLA's
    mean number of active keys); the values join the loss terms in every log line.

    Training states also hold the random states and the divergence guard, and validation leaves the
    random states as it found them, so that a run resumed with ``--auto_resume`` ends with the weights of
    an uninterrupted one (:mod:`acla_basicsr.data.sampler`).
    """

    reference_functions = {'bicubic': bicubic_reference, 'input': input_reference, **DEMOSAIC_REFERENCES}
    # options this model reads beyond basicsr's, by section (acla_basicsr/option_spec.py; docs/options.md)
    extra_option_keys = {
        'train': {'network_opt': Option('list', None, 'Losses computed from the network itself, '
                                        '[{type: ..., name: ..., ...}].'),
                  'gate_temperature': GATE_TEMPERATURE_OPTIONS, 'macs_penalty': MACS_PENALTY_OPTIONS,
                  'divergence': DIVERGENCE_OPTIONS},
        'val': {'reference': Option('str', None, 'Baseline logged beside the metrics (bicubic, input, ...).'),
                'tile': TILE_OPTIONS,
                'self_ensemble': Option('bool', False, 'Average the 8 flips/transpositions of the input.')}}

    @classmethod
    def check_options(cls, opt):
        """Reject options of this model before training starts (called by ``check_options``)."""
        reference = (opt.get('val') or {}).get('reference')
        if reference is not None and reference not in cls.reference_functions:
            raise OptionError(f"val.reference: unknown baseline '{reference}'; use one of "
                              f"{', '.join(sorted(cls.reference_functions))} or ~.")
        cls.check_pretrained(opt)
        val_keys = RestorationModel.extra_option_keys['val']
        read_section({k: v for k, v in (opt.get('val') or {}).items() if k in val_keys}, val_keys, 'val')
        if opt.get('is_train'):
            read_section((opt.get('train') or {}).get('divergence'), DIVERGENCE_OPTIONS, 'train.divergence')
            check_gate_temperature(opt)
            if check_macs_penalty(opt) is not None:
                net_type = (opt.get('network_g') or {}).get('type')
                if net_type in ARCH_REGISTRY and not hasattr(ARCH_REGISTRY.get(net_type), 'expected_attention_macs'):
                    raise OptionError(f'train.macs_penalty: network_g.type {net_type} has no expected_attention_macs '
                                      '(ACLAEDSR, ACLARCAN and the supernets have); remove train.macs_penalty.')

    @staticmethod
    def check_pretrained(opt):
        """``path.pretrain_network_g`` holds weights of ``network_g`` (basicsr fails in the model's constructor
        with a RuntimeError listing every missing key otherwise)."""
        path_opt = opt.get('path') or {}
        checkpoint, net_opt = path_opt.get('pretrain_network_g'), dict(opt.get('network_g') or {})
        if not isinstance(checkpoint, str) or not osp.isfile(checkpoint) or net_opt.get('type') not in ARCH_REGISTRY:
            return  # a missing file or an unknown type gets its own line from check_options
        net_type = net_opt.pop('type')
        try:
            net = ARCH_REGISTRY.get(net_type)(**net_opt)
        except (TypeError, ValueError):
            return  # check_options names the wrong argument
        load_weights(net, dict(opt['network_g']), checkpoint, path_opt.get('param_key_g', 'params'),
                     path_opt.get('strict_load_g', True), option='path.pretrain_network_g')

    def init_training_settings(self):
        super().init_training_settings()
        self.gate_temperature = check_gate_temperature(self.opt)
        if getattr(self, 'macs_penalty', None) is None:  # the search model sets its own
            self.macs_penalty = check_macs_penalty(self.opt)
        self.cri_network = OrderedDict()
        for loss_opt in self.opt['train'].get('network_opt') or []:
            name = loss_opt.get('name') or f"l_{loss_opt['type']}"
            loss_opt = {k: v for k, v in loss_opt.items() if k != 'name'}
            self.cri_network[name] = build_loss(loss_opt).to(self.device)
        self.divergence_guard = DivergenceGuard(self.opt['train'].get('divergence'),
                                                self.opt['path'].get('training_states'), dist=self.opt['dist'])

    @staticmethod
    def _add_terms(terms, name, value):
        if value is None:
            return
        if isinstance(value, dict):
            terms.update((k, v) for k, v in value.items() if v is not None)
        else:
            terms[name] = value

    def compute_losses(self, current_iter):
        """Return the named loss terms of the current batch; their sum is optimised.

        Subclasses that add terms extend this with ``super().compute_losses(current_iter)``.
        """
        terms = OrderedDict()
        if self.cri_pix:
            self._add_terms(terms, 'l_pix', self.cri_pix(self.output, self.gt))
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            self._add_terms(terms, 'l_percep', l_percep)
            self._add_terms(terms, 'l_style', l_style)
        net = self.get_bare_model(self.net_g)
        for name, loss in getattr(self, 'cri_network', {}).items():
            self._add_terms(terms, name, loss(net, current_iter))
        penalty = getattr(self, 'macs_penalty', None)
        if penalty is not None and current_iter > penalty['start_iter'] and terms:
            height, width = penalty['macs_size']
            ratio = net.expected_attention_macs(height, width) / net.backbone_macs(height, width)
            self.macs_ratio = ratio.item()
            rec = sum(terms.values())
            weight = macs_weight(penalty, current_iter)
            terms['l_macs'] = rec * (weight * ratio).to(rec.dtype)  # L_rec * (1 + lambda_t * ratio)
        return terms

    def backward_and_step(self, loss_dict, optimizers, current_iter, inputs=None):
        """Backpropagate the sum of the terms and step ``optimizers``, unless the divergence guard skips the
        step or stops the run (:mod:`acla_basicsr.models.divergence`). Return whether the step was taken.

        With ``inputs`` (a list of leaf tensors) only their gradients are computed (``Tensor.backward(inputs=...)``:
        the weights' are skipped); the forward pass then ran on the bare network, outside DDP, so their gradients
        are averaged over the ranks here.
        """
        sum(loss_dict.values()).backward(inputs=inputs)
        if inputs is not None and self.opt.get('dist'):
            for tensor in inputs:
                torch.distributed.all_reduce(tensor.grad)
                tensor.grad /= torch.distributed.get_world_size()
        named = list(self.get_bare_model(self.net_g).named_parameters())
        if not self.divergence_guard.check_step(loss_dict, named, current_iter, get_root_logger()):
            for optimizer in optimizers:
                optimizer.zero_grad()
            return False
        for optimizer in optimizers:
            optimizer.step()
        self.divergence_guard.check_weights(named, current_iter)
        return True

    def update_schedules(self, current_iter):
        """Set what depends on the iteration before a training step (the key-gate temperature); return log values."""
        stats = OrderedDict()
        net = self.get_bare_model(self.net_g)
        if getattr(self, 'gate_temperature', None) and hasattr(net, 'set_temperature'):
            schedule = self.gate_temperature
            stats['gate_temp'] = anneal(schedule['start'], schedule['end'], schedule['iters'], current_iter,
                                        schedule['mode'])
            stats['gate_noise'] = gate_noise(schedule, current_iter)
            net.set_temperature(stats['gate_temp'], stats['gate_noise'])
        return stats

    def step_stats(self):
        """Values that join the loss terms in the log line: the network's ``training_stats()`` and the MAC ratio."""
        net = self.get_bare_model(self.net_g)
        stats = OrderedDict(net.training_stats() if hasattr(net, 'training_stats') else {})
        if getattr(self, 'macs_penalty', None) is not None and hasattr(self, 'macs_ratio'):
            stats['macs_ratio'] = self.macs_ratio
        return stats

    def optimize_parameters(self, current_iter):
        schedule_stats = self.update_schedules(current_iter)
        self.optimizer_g.zero_grad()
        self.output = self.net_g(self.lq)
        loss_dict = self.compute_losses(current_iter)
        self.backward_and_step(loss_dict, (self.optimizer_g, ), current_iter)
        self.log_dict = self.reduce_loss_dict(loss_dict)
        self.log_dict.update(schedule_stats)
        self.log_dict.update(self.step_stats())
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    # ------------------------------------------------------------------ basicsr 1.4.2 fixes (acla_basicsr/compat.py)
    def model_to_device(self, net):
        """basicsr's, except that a distributed run on CPUs wraps DDP without ``device_ids``.

        basicsr builds ``DistributedDataParallel(net, device_ids=[torch.cuda.current_device()])``, which fails
        on a machine without CUDA (measured: gloo training under torchrun on the CPU).
        """
        if self.opt['dist'] and self.device.type == 'cpu':
            return DistributedDataParallel(
                net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return super().model_to_device(net)

    def save_network(self, net, net_label, current_iter, param_key='params'):
        """basicsr's, written atomically: a run killed while saving leaves the previous checkpoint, not a
        truncated one (measured: basicsr's ``torch.save`` in place left half-written ``.pth`` files).

        Every state dict of ``net_g`` (``params`` and ``params_ema``) carries its ``network_g`` options, scale,
        task and colour in its ``_metadata`` (:mod:`acla_basicsr.inference.checkpoints`, the format of the
        published zoo files), so that ``acla-restore --model net_g_latest.pth`` needs no options file.
        """
        network_g = self.opt.get('network_g') if net_label == 'net_g' else None
        info = training_description(self.opt) if isinstance(network_g, dict) else None

        def describe(save_dict):
            return {key: described_state_dict(state, network_g, **info) for key, state in save_dict.items()}

        with compat.atomic_saves(describe if info is not None else None):
            super().save_network(net, net_label, current_iter, param_key)

    # ------------------------------------------------------------------ exact resume
    def save(self, epoch, current_iter):
        """basicsr's save; in a distributed run every rank first hands its random states to rank 0, which
        writes them into the training state, so that every rank of a resumed run draws what it would have."""
        self.rank_rng_states = None
        if self.opt.get('dist') and current_iter != -1:
            import torch.distributed as dist
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, rng_state_for_save(capture_rng_state()))
            self.rank_rng_states = states
        super().save(epoch, current_iter)

    @master_only
    def save_training_state(self, epoch, current_iter):
        """basicsr's training state (epoch, iteration, optimizers, schedulers) plus the random states (of every
        rank in a distributed run) and the divergence guard, written atomically (:mod:`acla_basicsr.data.sampler`)."""
        if current_iter == -1:
            return
        state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers],
                 'rng': rng_state_for_save(capture_rng_state()), 'rng_rank': self.opt.get('rank', 0)}
        if getattr(self, 'rank_rng_states', None):
            state['rng_ranks'] = self.rank_rng_states
        if hasattr(self, 'divergence_guard'):
            state['divergence'] = self.divergence_guard.state_dict()
        fileio.torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        """basicsr's resume (optimizers, schedulers) and the divergence guard; the random states are restored by
        the sampler, right before the first resumed batch (:class:`acla_basicsr.data.sampler.ResumableSampler`)."""
        super().resume_training(resume_state)
        if 'divergence' in resume_state and hasattr(self, 'divergence_guard'):
            self.divergence_guard.load_state_dict(resume_state['divergence'])

    def test(self):
        """SRModel's test on the bare network, tiled and/or self-ensembled as ``val.tile`` and
        ``val.self_ensemble`` say: validation runs on rank 0 alone, and a DDP forward may broadcast buffers
        (the mean shift of ACLAEDSR, ENLCA's random matrix), a collective that the other ranks never join."""
        wrapped = self.net_g
        self.net_g = self.get_bare_model(wrapped)
        try:
            val_opt = self.opt.get('val') or {}
            tile, ensemble = val_opt.get('tile') or {}, val_opt.get('self_ensemble', False)
            if not tile.get('tile_size') and not ensemble:
                super().test()
                return
            net = getattr(self, 'net_g_ema', self.net_g)
            training = net.training
            net.eval()
            self.output = run_network(net, self.lq, tile.get('tile_size'), tile.get('tile_pad', DEFAULT_TILE_PAD),
                                      ensemble)
            net.train(training)
        finally:
            self.net_g = wrapped

    # ------------------------------------------------------------------ validation baseline
    def reference_name(self):
        """The name of the validation baseline from ``val.reference`` (see the class docstring)."""
        default = 'bicubic' if self.opt.get('scale', 1) > 1 else 'input'
        name = self.opt.get('val', {}).get('reference', default)
        if name is not None and name not in self.reference_functions:
            raise ValueError(f"val.reference: unknown baseline '{name}'; use one of "
                             f"{', '.join(sorted(self.reference_functions))} or ~.")
        return name

    def _reference_metrics(self, dataloader):
        """Metrics of the baseline on a validation set, computed once per set and cached."""
        dataset_name = dataloader.dataset.opt['name']
        cache = self.__dict__.setdefault('reference_results', {})
        if dataset_name not in cache:
            function = self.reference_functions[self.reference_name()]
            totals = {metric: 0.0 for metric in self.opt['val']['metrics']}
            count = 0
            for data in dataloader:
                gt = data['gt']
                ref = function(data['lq'], self.opt.get('scale', 1))[..., :gt.shape[-2], :gt.shape[-1]]
                metric_data = {'img': tensor2img([ref]), 'img2': tensor2img([gt])}
                for metric, metric_opt in self.opt['val']['metrics'].items():
                    totals[metric] += calculate_metric(metric_data, metric_opt)
                count += 1
            cache[dataset_name] = {metric: total / max(count, 1) for metric, total in totals.items()}
        return cache[dataset_name]

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """SRModel's validation, with the baseline's metrics; the random states are left as they were, so that
        training draws the same numbers whether or not (and however often) it validates."""
        rng_state = capture_rng_state()
        try:
            val_opt = self.opt.get('val') or {}
            self._current_reference = None
            if val_opt.get('metrics') and self.reference_name() and self.opt.get('rank', 0) == 0:
                if 'gt' in dataloader.dataset[0]:
                    self._current_reference = self._reference_metrics(dataloader)
            super().validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            restore_rng_state(rng_state)

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        reference = getattr(self, '_current_reference', None)
        if not reference:
            return
        name = self.reference_name()
        parts = [f'{metric}: {value:.4f} vs {name} {reference[metric]:.4f} ({value - reference[metric]:+.4f})'
                 for metric, value in self.metric_results.items()]
        get_root_logger().info(f'Validation {dataset_name} against {name}: ' + '; '.join(parts))
        if tb_logger:
            for metric, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}_gain_over_{name}', value - reference[metric],
                                     current_iter)
