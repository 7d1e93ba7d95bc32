import copy
import math
import os.path as osp
from collections import OrderedDict

from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from acla_basicsr.archs.supernet import PositionSelection, most_probable_count
from acla_basicsr.errors import OptionError
from .restoration_model import RestorationModel
from .search_export import export_search
from .search_options import OPTIM_ARCH_OPTIONS, SEARCH_OPTIONS, check_search_options, search_temperature
from .search_plot import HEATMAP_FILE, HISTORY_FILE, update_history, write_heatmap


@MODEL_REGISTRY.register()
class ACLASearchModel(RestorationModel):
    """Differentiable insert-position search for ACLA (our design; the ACLA paper gives only Table 9).

    Trains an ``ACLASuperEDSR`` / ``ACLASuperRCAN`` supernet (:mod:`acla_basicsr.archs.supernet`) on

        ``L = L_rec * (1 + lambda * E[added MACs] / backbone MACs)``

    (RestorationModel's MAC term; multiplicative so that lambda does not depend on the loss's scale, see
    docs/search.md), where ``E[added MACs]`` is the analytic expectation over the independent position gates
    (pairwise cross-layer key term included) and the key gates of the candidates, at the training LR patch
    size, and the backbone's MACs are counted by torch's flop counter (SPEC section 2); its gradient charges each
    candidate its share of them (docs/search.md). The architecture logits have their own Adam
    (``train.optim_arch``, constant learning rate; ``optim_g`` and the scheduler drive the weights only). Options
    (``train.search``):

    - ``lambda`` (required, >= 0): weight of the MAC penalty (ACLA Table 9: 0.15 EDSR SR, 0.3 RCAN SR,
      0.2 restoration).
    - ``temperature_start`` / ``temperature_end`` / ``anneal_iter``: the position-gate temperature decays
      exponentially from start to end over anneal_iter iterations (default 1.0 -> 0.1 over total_iter); it is a
      function of the iteration, so resuming continues it.
    - ``straight_through``: hard gates in the forward pass, relaxed gradient (a closed candidate still gets
      the relaxed gradient of its roles as query and as key layer). Default: true (relaxed gates train partial
      modules and selected one position of 16 on EDSR-16 DN at lambda 0.2: docs/search.md).
    - ``readout``: how the final positions are read from the gate probabilities: ``most_probable`` (default, the
      most probable selection of at least the most probable number of open candidates: those with P > 0.5, topped
      up to that number), ``expected_count`` (the round(sum P) most probable candidates) or ``threshold``
      (P > 0.5); evaluation computes the same selection (:func:`~acla_basicsr.archs.supernet.readout_selection`).
    - ``ramp_iter``: iterations over which lambda rises from 0 (default: ``arch_start_iter``), so that the key
      gates see the reconstruction gradient of the zero-initialised modules before their MAC term.
    - ``mode``: ``joint`` (default; one-shot: weights and logits stepped on the same batch) or ``alternate``
      (first-order DARTS-style: the last ``arch_fraction`` of each batch is held out from the weights step
      and used for the architecture step, which differentiates the logits alone; the rest steps the weights
      with the logits fixed).
    - ``arch_start_iter``: iterations that train the weights only before the logits move. Default: 0.
    - ``macs_size``: LR size (int or [h, w]) of the MAC ratio. Default: gt_size // scale.

    At every validation, and when the final model is saved, rank 0 logs the gate probabilities (log line,
    tensorboard ``search/*``), redraws the heat map ``gate_heatmap.png`` from ``gate_history.csv`` and exports
    ``searched_positions.yml`` and ``train_searched.yml`` (the final network: the readout's positions) into the
    experiment folder. Evaluation uses the readout's hard gates on the bare network. Every log line has the
    temperature, the expected added MACs over the backbone's (``macs_ratio``) and the selection (``sel``).
    """

    # options this model reads beyond RestorationModel's (acla_basicsr/option_spec.py; docs/options.md)
    extra_option_keys = {'train': {'search': SEARCH_OPTIONS, 'optim_arch': OPTIM_ARCH_OPTIONS}}

    def __init__(self, opt):
        self.search = self.check_options(opt) if opt.get('is_train') else None
        if self.search is not None:  # RestorationModel's MAC term, with the search's lambda and size
            self.macs_penalty = {'lambda': self.search['lambda'], 'macs_size': self.search['macs_size'],
                                 'start_iter': 0, 'ramp_iter': self.search['ramp_iter']}
        # the options before training pops optimizer and scheduler types out of them, for the export
        self.source_opt = copy.deepcopy(opt)
        self.last_iter = 0
        super().__init__(opt)

    @classmethod
    def check_options(cls, opt):
        """Check the search options and the network of a search config (one-line OptionError); return them."""
        super().check_options(opt)
        if not opt.get('is_train'):
            return None
        search = check_search_options(opt)
        net_type = (opt.get('network_g') or {}).get('type')
        if net_type in ARCH_REGISTRY and not getattr(ARCH_REGISTRY.get(net_type), 'is_position_supernet', False):
            raise OptionError(f'network_g.type: {net_type} is not a position supernet; ACLASearchModel searches '
                              'ACLASuperEDSR or ACLASuperRCAN (use RestorationModel to train other networks).')
        return search

    # ------------------------------------------------------------------ optimizers
    def setup_optimizers(self):
        train_opt = self.opt['train']
        net = self.get_bare_model(self.net_g)
        weights = [v for v in self.net_g.parameters() if v.requires_grad and v is not net.arch_logits]
        optim_opt = dict(train_opt['optim_g'])
        self.optimizer_g = self.get_optimizer(optim_opt.pop('type'), weights, **optim_opt)
        self.optimizers.append(self.optimizer_g)
        arch_opt = dict(self.search['optim_arch'])
        self.optimizer_arch = self.get_optimizer(arch_opt.pop('type'), [net.arch_logits], **arch_opt)
        for group in self.optimizer_arch.param_groups:
            group.setdefault('initial_lr', group['lr'])  # for basicsr's warm-up, which rescales every optimizer
        net.position_straight_through = self.search['straight_through']
        net.readout = self.search['readout']

    def setup_schedulers(self):
        """The scheduler drives the weights' learning rate; the logits' stays constant.

        The architecture optimizer joins :attr:`optimizers` after the schedulers are built, so that basicsr's
        ``save_training_state`` / ``resume_training`` save and restore it.
        """
        super().setup_schedulers()
        self.optimizers.append(self.optimizer_arch)

    # ------------------------------------------------------------------ training step
    def temperature(self, current_iter):
        return search_temperature(self.search, current_iter)

    def _step(self, current_iter, optimizers, lq, gt, logits_only=False):
        """One forward/backward/step; ``logits_only``: the architecture step of ``mode: alternate``, which
        differentiates the architecture logits alone (on the bare network, outside DDP)."""
        for optimizer in (self.optimizer_g, self.optimizer_arch):
            optimizer.zero_grad()
        self.lq, self.gt = lq, gt
        net = self.get_bare_model(self.net_g)
        self.output = (net if logits_only else self.net_g)(lq)
        loss_dict = self.compute_losses(current_iter)
        # with RestorationModel's divergence guard
        self.backward_and_step(loss_dict, optimizers, current_iter, [net.arch_logits] if logits_only else None)
        return loss_dict

    def optimize_parameters(self, current_iter):
        net = self.get_bare_model(self.net_g)
        self.last_iter = current_iter
        schedule_stats = self.update_schedules(current_iter)
        net.position_temperature = self.temperature(current_iter)
        arch_on = current_iter > self.search['arch_start_iter']
        lq, gt = self.lq, self.gt
        if self.search['mode'] == 'joint':
            optimizers = (self.optimizer_g, self.optimizer_arch) if arch_on else (self.optimizer_g, )
            loss_dict = self._step(current_iter, optimizers, lq, gt)
        elif not arch_on:
            loss_dict = self._step(current_iter, (self.optimizer_g, ), lq, gt)
        else:
            held_out = min(lq.shape[0] - 1, max(1, math.ceil(lq.shape[0] * self.search['arch_fraction'])))
            loss_dict = self._step(current_iter, (self.optimizer_g, ), lq[:-held_out], gt[:-held_out])
            arch_terms = self._step(current_iter, (self.optimizer_arch, ), lq[-held_out:], gt[-held_out:],
                                    logits_only=True)
            loss_dict.update((f'{k}_arch', v) for k, v in arch_terms.items() if k != 'l_macs')
            self.lq, self.gt = lq, gt
        self.log_dict = self.reduce_loss_dict(loss_dict)
        self.log_dict.update(schedule_stats)
        self.log_dict.update(self.step_stats())
        self.log_dict.update(self.search_stats())

    def search_stats(self):
        """Temperature, expected added MACs / backbone MACs, and the selection (the readout's) for the log line."""
        net = self.get_bare_model(self.net_g)
        return OrderedDict(temp=net.position_temperature, macs_ratio=getattr(self, 'macs_ratio', float('nan')),
                           sel=PositionSelection(net.selected_positions()))

    # ------------------------------------------------------------------ evaluation, observability, export
    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        super().validation(dataloader, current_iter, tb_logger, save_img)
        # basicsr's final validation passes total_iter + 1; record the iteration the logits come from
        self.record_search(self.last_iter or current_iter, tb_logger)

    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)
        if current_iter == -1 and self.is_train:  # the end of training: export also when val is not configured
            self.record_search(self.last_iter, None)

    def record_search(self, current_iter, tb_logger=None):
        """Log the gates, update the history and heat map, and export the final network (rank 0 only)."""
        if self.opt.get('rank', 0) != 0 or not self.is_train:
            return
        net = self.get_bare_model(self.net_g)
        root = self.opt['path']['experiments_root']
        probs = net.gate_probabilities().cpu().tolist()
        iterations, history = update_history(osp.join(root, HISTORY_FILE), current_iter, net.insert_positions, probs)
        image = write_heatmap(osp.join(root, HEATMAP_FILE), iterations, net.insert_positions, history, net.readout)
        positions, _, config_path = export_search(root, self.source_opt, net, current_iter, self.search,
                                                  self.opt.get('root_path'))
        height, width = self.search['macs_size']
        ratio = net.expected_attention_macs(height, width).item() / net.backbone_macs(height, width)
        probs_text = ', '.join(f'{p}: {v:.3f}' for p, v in zip(net.insert_positions, probs))
        get_root_logger().info(f'Search at iter {current_iter}: positions {positions} (readout {net.readout}, '
                               f'sum P = {sum(probs):.2f}, most probable count {most_probable_count(probs)}); '
                               f'expected added MACs {100 * ratio:.2f} % of the backbone; P(open) = {{{probs_text}}}; '
                               f'final network config: {config_path}')
        if tb_logger:
            for position, prob in zip(net.insert_positions, probs):
                tb_logger.add_scalar(f'search/prob_p{position}', prob, current_iter)
            tb_logger.add_scalar('search/expected_macs_ratio', ratio, current_iter)
            tb_logger.add_scalar('search/num_open', len(positions), current_iter)
            tb_logger.add_image('search/gate_heatmap', image, current_iter, dataformats='HWC')
