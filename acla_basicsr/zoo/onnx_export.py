"""ONNX export of the project's networks with dynamic batch, height and width, checked with onnxruntime.

Unregistered helper of ``scripts/export_onnx.py`` (as Real-ESRGAN's ``scripts/pytorch2onnx.py``, with the
dynamic axes that its commented-out line leaves out, and a check at another size).

Exporter: torch's current one, ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` then onnxscript's
translation; needs the ``onnxscript`` package), at opset 18 by default (18 to 23: below 18 it converts the graph
with onnx's version converter, which has no adapter for the ``Pad`` of EARN and then leaves opset 18). The input
is traced at batch 2 (``torch.export`` takes a dimension of size 1 for a constant) with the batch, height and
width symbolic: the graph's input is ``(batch, C, height, width)``, its output e.g. ``(batch, C, 2*height,
2*width)``. Every family exports with it (``tests/test_onnx.py``). Should a network fail to, :func:`export_onnx`
warns in one line why and falls back to torch's legacy TorchScript exporter (``dynamo=False``, ``dynamic_axes``,
opset at most 20), deprecated since torch 2.9 made the dynamo one the default.

Export paths (each computes the function of the training path; ``tests/test_onnx.py`` checks them equal):

- ACLA/CLA key sampling: ``F.grid_sample`` (:func:`~acla_basicsr.archs.cla_modules.set_sampling_method`,
  'grid_sample') instead of the default ``F.embedding_bag`` with per-sample weights, which has no ONNX export.
  With 'grid_sample' an ACLA module computes every key (its dense path, closed keys weighted 0), not the sparse
  evaluation, whose selection of the open keys has a data-dependent size.
- Memory chunking (CLA/NL ``max_memory_mb``) and EARN's bands of rows depend on the input size; their budgets
  are set to ``math.inf`` for the export, which the networks take for one chunk (one band) with no arithmetic on
  the size and no loop over it, so that the graph does not fix the number of chunks of the size it was traced
  at (and ``torch.export`` has no size-dependent branch to take). EARN's window mask uses shifted views instead
  of ``Tensor.unfold`` (:func:`~acla_basicsr.archs.earn_modules.window_mask`).
"""
import contextlib
import math
import warnings

import numpy as np
import torch

DEFAULT_OPSET = 18


@contextlib.contextmanager
def export_mode(net):
    """Within the block, ``net`` computes with its export paths (see the module docstring); restored after."""
    from acla_basicsr.archs.cla_modules import CrossLayerAttention
    saved = []
    for module in net.modules():
        if isinstance(module, CrossLayerAttention):
            saved.append((module, 'sampling_method', module.__dict__.get('sampling_method')))
            module.sampling_method = 'grid_sample'
        if hasattr(module, 'max_memory_mb'):
            saved.append((module, 'max_memory_mb', module.__dict__.get('max_memory_mb')))
            module.max_memory_mb = math.inf
        for name in ('BAND_ELEMENTS', 'TAIL_BAND_ELEMENTS'):  # LocalSelfAttention's and EARN's bands of rows
            if hasattr(type(module), name):
                saved.append((module, name, module.__dict__.get(name)))
                setattr(module, name, math.inf)
    try:
        yield net
    finally:
        for module, name, value in reversed(saved):
            if value is None:
                module.__dict__.pop(name, None)
            else:
                setattr(module, name, value)


def export_onnx(net, path, size=(64, 64), opset=DEFAULT_OPSET):
    """Export ``net`` (eval mode) to ``path`` with a dynamic batch, height and width.

    The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) writes one file, the weights included. If it
    fails, one warning says which network and why, and the deprecated TorchScript exporter writes the file.

    Args:
        net (nn.Module): The network; its first convolution tells the input channels.
        path (str): The .onnx file.
        size (tuple[int, int]): (H, W) of the tracing input, each at least 2. Default: (64, 64).
        opset (int): ONNX opset, 18 to 23 (the TorchScript fallback: at most 20). Default: 18.

    Returns:
        str: The exporter that wrote the file: 'dynamo', or 'torchscript' (the fallback).
    """
    from acla_basicsr.inference import input_channels
    net = net.eval()
    param = next(net.parameters())
    # batch 2: torch.export takes a dimension of size 1 for a constant
    dummy = torch.rand(2, input_channels(net), *size, device=param.device, dtype=param.dtype)
    with export_mode(net), torch.no_grad():
        try:
            with warnings.catch_warnings():
                # ACLA's evaluation statistics are module attributes; torch.export restores them after the trace
                warnings.filterwarnings('ignore', 'The tensor attributes .* were assigned during export', UserWarning)
                torch.onnx.export(
                    net, (dummy, ),
                    path,
                    dynamo=True,
                    opset_version=opset,
                    external_data=False,
                    verbose=False,
                    input_names=['input'],
                    output_names=['output'],
                    dynamic_shapes=({0: 'batch', 2: 'height', 3: 'width'}, ))
            return 'dynamo'
        except Exception as error:  # noqa: B902  (any failure of the dynamo exporter: the fallback says why)
            _export_torchscript(net, dummy, path, opset)  # its own failure is raised, chained to this one
            cause = error  # the root of torch.onnx's chain, e.g. the Python error of the network's code
            while cause.__cause__ is not None:
                cause = cause.__cause__
            reason = f'{type(cause).__name__}: {(str(cause).strip().splitlines() or [""])[0][:200]}'
            warnings.warn(
                f'{type(net).__name__}: the dynamo ONNX exporter failed ({reason}); exported with the '
                'deprecated TorchScript exporter (dynamo=False) instead', stacklevel=2)
            return 'torchscript'


def _export_torchscript(net, dummy, path, opset):
    """The fallback of :func:`export_onnx`: torch's legacy TorchScript exporter (``dynamo=False``, a
    DeprecationWarning since torch 2.9), with ``dynamic_axes``."""
    with warnings.catch_warnings():
        # the tracer warns about every Python number taken from a shape; check_onnx at another size is what tells
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', UserWarning)
        warnings.simplefilter('ignore', DeprecationWarning)  # dynamo=False's; export_onnx's warning says it
        torch.onnx.export(
            net, (dummy, ),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=['input'],
            output_names=['output'],
            dynamic_axes={'input': {0: 'batch', 2: 'height', 3: 'width'},
                          'output': {0: 'batch', 2: 'out_height', 3: 'out_width'}})


def check_onnx(net, path, size=(37, 53), seed=0, batch=1):
    """Run the .onnx with onnxruntime and ``net`` with torch on one random input; return the max difference.

    Args:
        net (nn.Module): The exported network.
        path (str): The .onnx file.
        size (tuple[int, int]): (H, W) of the check input; use another size than the export's. Default: (37, 53).
        seed (int): Seed of the input. Default: 0.
        batch (int): Images in the input. Default: 1.

    Returns:
        float: max |onnxruntime - torch| over the output.
    """
    import onnxruntime
    from acla_basicsr.inference import input_channels
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, input_channels(net), *size, generator=generator)
    param = next(net.parameters())
    with torch.no_grad():
        expected = net.eval()(image.to(param.device, param.dtype)).float().cpu().numpy()
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    output = session.run(None, {session.get_inputs()[0].name: image.numpy()})[0]
    if output.shape != expected.shape:
        raise ValueError(f'{path}: onnxruntime gives {output.shape} at input {tuple(image.shape)}, torch '
                         f'{expected.shape}; the graph fixed a size.')
    return float(np.abs(output - expected).max())
