"""ONNX export of the project's networks with dynamic height and width, checked with onnxruntime.

Unregistered helper of ``scripts/export_onnx.py`` (as Real-ESRGAN's ``scripts/pytorch2onnx.py``, with the
dynamic axes that its commented-out line leaves out, and a check at another size).

Export paths (each computes the function of the training path; ``tests/test_zoo.py`` checks them equal):

- ACLA/CLA key sampling: ``F.grid_sample`` (:func:`~acla_basicsr.archs.cla_modules.set_sampling_method`,
  'grid_sample') instead of the default ``F.embedding_bag`` with per-sample weights, which has no ONNX export.
  With 'grid_sample' an ACLA module computes every key (its dense path, closed keys weighted 0), not the sparse
  evaluation, whose selection of the open keys has a data-dependent size.
- Memory chunking (CLA/NL ``max_memory_mb``) and EARN's bands of rows depend on the input size; they are
  switched off for the export (one chunk, one band), so that the graph does not fix the number of chunks of
  the size it was traced at. EARN's window mask uses shifted views instead of ``Tensor.unfold``
  (:func:`~acla_basicsr.archs.earn_modules.window_mask`).

torch's TorchScript-based exporter (``dynamo=False``) is used: it needs no extra package and exports every
family at opset 17 with ``dynamic_axes``; the dynamo exporter needs onnxscript and symbolic shapes through the
size-dependent Python loops of the networks.
"""
import contextlib
import math
import warnings

import numpy as np
import torch

DEFAULT_OPSET = 17


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
                setattr(module, name, 2**62)
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

    Args:
        net (nn.Module): The network; its first convolution tells the input channels.
        path (str): The .onnx file.
        size (tuple[int, int]): (H, W) of the tracing input. Default: (64, 64).
        opset (int): ONNX opset. Default: 17.
    """
    from acla_basicsr.inference import input_channels
    net = net.eval()
    param = next(net.parameters())
    dummy = torch.rand(1, input_channels(net), *size, device=param.device, dtype=param.dtype)
    with export_mode(net), torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about every Python number taken from a shape; check_onnx at another size is what tells
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', UserWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(
            net, (dummy, ),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=['input'],
            output_names=['output'],
            dynamic_axes={'input': {0: 'batch', 2: 'height', 3: 'width'},
                          'output': {0: 'batch', 2: 'out_height', 3: 'out_width'}})


def check_onnx(net, path, size=(37, 53), seed=0):
    """Run the .onnx with onnxruntime and ``net`` with torch on one random input; return the max difference.

    Args:
        net (nn.Module): The exported network.
        path (str): The .onnx file.
        size (tuple[int, int]): (H, W) of the check input; use another size than the export's. Default: (37, 53).
        seed (int): Seed of the input. Default: 0.

    Returns:
        float: max |onnxruntime - torch| over the output.
    """
    import onnxruntime
    from acla_basicsr.inference import input_channels
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, input_channels(net), *size, generator=generator)
    param = next(net.parameters())
    with torch.no_grad():
        expected = net.eval()(image.to(param.device, param.dtype)).float().cpu().numpy()
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    output = session.run(None, {session.get_inputs()[0].name: image.numpy()})[0]
    if output.shape != expected.shape:
        raise ValueError(f'{path}: onnxruntime gives {output.shape} at input {tuple(image.shape)}, torch '
                         f'{expected.shape}; the graph fixed a size.')
    return float(np.abs(output - expected).max())
