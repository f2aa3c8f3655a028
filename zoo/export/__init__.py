"""Export of the transforms (g_a, h_a, h_s, g_s, and context_prediction and entropy_parameters of autoregressive
models) to ONNX and TorchScript, and an ONNX Runtime backend that codes streams interchangeable with the eager one."""

from zoo.export.graphs import entry_metadata, export_graphs, foldable_copy, graph_modules

__all__ = ["entry_metadata", "export_graphs", "foldable_copy", "graph_modules"]
