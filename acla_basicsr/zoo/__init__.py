"""Publishing and using trained networks: published files and ``load_zoo_model`` (:mod:`.published`), model
cards (:mod:`.card`), detection of a network from its state dict (:mod:`.detect`), ONNX export
(:mod:`.onnx_export`) and spandrel support (:mod:`.spandrel_support`)."""
